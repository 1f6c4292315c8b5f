"""Tiny generated datasets for tests/test_data.py, written to the formats' specs by hand.

Imported by test_data.py (conftest.py already exists and is shared with the training tests).
Nothing here touches the network, ~/.cache or ../shared.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_COUNTS = {"train": 24, "test": 7}  # different, so a test can tell which split was read


@pytest.fixture(autouse=True)
def data_cache(isolated, tmp_path, monkeypatch) -> Path:
    """ganrun's cache in tmp (never ~/.cache; after conftest's `isolated`, so this one wins), and no
    network: a connect attempt fails the test."""
    cache = tmp_path / "ganrun-cache"
    monkeypatch.setenv("GANRUN_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError(f"a data test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return cache


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format by its spec: a big-endian magic (0x0000, type 0x08, ndim), the sizes, the bytes."""
    magic = {3: IDX_IMAGES_MAGIC, 1: IDX_LABELS_MAGIC}[array.ndim]
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_file(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)
    return path


@dataclass
class MnistSplits:
    images: dict[str, np.ndarray]  # split -> uint8 (N, 28, 28)
    labels: dict[str, np.ndarray]  # split -> uint8 (N,)


def mnist_arrays(seed: int = 0) -> MnistSplits:
    """Random 'digits'; train image 0 is a constant 200 so a resize can be checked by value."""
    rng = np.random.default_rng(seed)
    images = {split: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for split, n in MNIST_COUNTS.items()}
    images["train"][0] = 200
    labels = {split: rng.integers(0, 10, (n,), dtype=np.uint8) for split, n in MNIST_COUNTS.items()}
    return MnistSplits(images, labels)


def write_mnist(directory: Path, arrays: MnistSplits, *, gz: bool = False) -> Path:
    """The four IDX files (train and t10k) directly in `directory`; returns it."""
    for split, (image_stem, label_stem) in MNIST_STEMS.items():
        write_idx_file(directory / image_stem, arrays.images[split], gz=gz)
        write_idx_file(directory / label_stem, arrays.labels[split], gz=gz)
    return directory


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, size, mtime and content hash: equal snapshots = untouched."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        if path.is_file():
            snapshot[str(path.relative_to(root))] = (
                "file", stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()
            )
        else:
            snapshot[str(path.relative_to(root))] = ("dir", stat.st_mtime_ns)
    return snapshot


# CIFAR-10

CIFAR_TRAIN_PER_BATCH = 4
CIFAR_TEST_COUNT = 6


@dataclass
class FakeCifar:
    root: Path  # holds cifar-10-batches-py/
    train_data: np.ndarray  # uint8 (20, 3072), rows as in the files
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray


def write_cifar_batch(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    batch = {b"batch_label": path.name.encode(), b"labels": [int(v) for v in labels], b"data": data,
             b"filenames": [f"{i}.png".encode() for i in range(len(data))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def make_cifar(root: Path, seed: int = 0) -> FakeCifar:
    """The python-pickle layout of cifar-10-python.tar.gz, with a few images per batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_data = rng.integers(0, 256, (5 * CIFAR_TRAIN_PER_BATCH, 3072), dtype=np.uint8)
    train_labels = rng.integers(0, 10, (5 * CIFAR_TRAIN_PER_BATCH,))
    for index in range(5):
        rows = slice(index * CIFAR_TRAIN_PER_BATCH, (index + 1) * CIFAR_TRAIN_PER_BATCH)
        write_cifar_batch(folder / f"data_batch_{index + 1}", train_data[rows], train_labels[rows])
    test_data = rng.integers(0, 256, (CIFAR_TEST_COUNT, 3072), dtype=np.uint8)
    test_labels = rng.integers(0, 10, (CIFAR_TEST_COUNT,))
    write_cifar_batch(folder / "test_batch", test_data, test_labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": names, b"num_cases_per_batch": CIFAR_TRAIN_PER_BATCH, b"num_vis": 3072}, protocol=2)
    )
    return FakeCifar(root, train_data, train_labels, test_data, test_labels)


@pytest.fixture
def cifar(tmp_path) -> FakeCifar:
    return make_cifar(tmp_path / "data")


# CelebA

CELEBA_SIZES = [(89, 109), (178, 218), (64, 64), (100, 80), (89, 109), (120, 160)] * 2  # (width, height)


def celeba_colour(index: int) -> tuple[int, int, int]:
    return (20 * index % 256, 255 - 15 * index, (90 + 37 * index) % 256)


def make_celeba(root: Path) -> Path:
    """ROOT/celeba/img_align_celeba/000001.jpg...: solid colours of assorted sizes (the real
    half-resolution copy is 89x109); returns the img_align_celeba folder."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for index, size in enumerate(CELEBA_SIZES):
        Image.new("RGB", size, celeba_colour(index)).save(folder / f"{index + 1:06d}.jpg", quality=95)
    return folder


# a messy image folder

@dataclass
class MixedFolder:
    root: Path
    good: dict[Path, tuple[int, int, int]]  # readable file -> the RGB colour it should load as
    bad: list[Path]  # the corrupt and the truncated file


def make_mixed_folder(root: Path) -> MixedFolder:
    """Nested folders, .png/.jpg/.JPG/.webp/.bmp, grayscale and RGBA inputs, a text file that is
    no image, a corrupt .jpg (random bytes) and a truncated .png."""
    rng = np.random.default_rng(1)
    good: dict[Path, tuple[int, int, int]] = {}

    def save(relative: str, image: Image.Image, rgb: tuple[int, int, int], **options) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **options)
        good[path] = rgb

    save("a.png", Image.new("RGB", (40, 30), (200, 30, 60)), (200, 30, 60))
    save("cats/b.jpg", Image.new("RGB", (33, 47), (10, 120, 240)), (10, 120, 240), quality=95)
    save("cats/deep/er/C.JPG", Image.new("RGB", (64, 64), (250, 250, 10)), (250, 250, 10), format="JPEG", quality=95)
    save("dogs/d.webp", Image.new("RGB", (50, 20), (90, 180, 90)), (90, 180, 90), lossless=True)
    save("dogs/gray.png", Image.new("L", (45, 45), 77), (77, 77, 77))
    save("dogs/rgba.png", Image.new("RGBA", (30, 40), (10, 20, 30, 128)), (10, 20, 30))  # alpha dropped
    save("e.bmp", Image.new("RGB", (16, 24), (0, 0, 0)), (0, 0, 0))

    (root / "notes.txt").write_text("not an image, not counted")
    corrupt = root / "cats" / "corrupt.jpg"
    corrupt.write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    truncated = root / "dogs" / "truncated.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    return MixedFolder(root, good, [corrupt, truncated])


@pytest.fixture
def mixed_folder(tmp_path) -> MixedFolder:
    return make_mixed_folder(tmp_path / "images")


# inputs real users have (tests/test_decoding.py)

EXIF_ORIENTATION = 0x0112
QUADRANT_COLOURS = ((230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 230, 30))  # TL, TR, BL, BR


def upright_pattern(height: int = 24, width: int = 40) -> np.ndarray:
    """uint8 (height, width, 3): four solid quadrants of different colours, so every rotation and
    flip of it is a different array; sides multiples of 8 keep JPEG blocks inside one colour."""
    pixels = np.zeros((height, width, 3), np.uint8)
    top, left = height // 2, width // 2
    for (rows, cols), colour in zip(
        [(slice(0, top), slice(0, left)), (slice(0, top), slice(left, None)),
         (slice(top, None), slice(0, left)), (slice(top, None), slice(left, None))], QUADRANT_COLOURS):
        pixels[rows, cols] = colour
    return pixels


def save_as_phone_photo(path: Path, upright: np.ndarray, **options) -> Path:
    """Store `upright` rotated 90 degrees counter-clockwise with EXIF Orientation 6 ("rotate 90
    clockwise to display"), as a phone held upright writes its sensor's landscape pixels."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **options)
    return path


def gray16_ramp(height: int = 16, width: int = 20) -> np.ndarray:
    """uint16 (height, width): 0 -> 65535 in equal steps that are not multiples of 257, so the
    rounding of value / 257 is exercised."""
    return np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)


def png_rgb16_bytes(pixels: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (which PIL cannot write) from uint16 (H, W, 3), by the PNG spec."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def green_sprite(size: int = 16) -> np.ndarray:
    """uint8 (size, size, 4): opaque red at x < size/2 - 2, a half-transparent (alpha 128) red
    edge two pixels wide, and fully transparent pixels that store green (as many editors leave them)."""
    pixels = np.zeros((size, size, 4), np.uint8)
    edge = size // 2 - 2
    pixels[:, :edge] = (255, 0, 0, 255)
    pixels[:, edge : size // 2] = (255, 0, 0, 128)
    pixels[:, size // 2 :] = (0, 255, 0, 0)
    return pixels


def save_palette_with_transparent_index(path: Path, size: int = 8) -> Path:
    """A palette PNG: index 1 (red) on the left half, index 0 (stored black) on the right half,
    and index 0 declared transparent (tRNS), as GIF-era sprites and optimised PNGs are."""
    image = Image.new("P", (size, size), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    for x in range(size // 2):
        for y in range(size):
            image.putpixel((x, y), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, transparency=0)
    return path


def truncate_file(path: Path, fraction: float = 0.5) -> Path:
    """Keep the first `fraction` of the file's bytes: an interrupted copy or download."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
