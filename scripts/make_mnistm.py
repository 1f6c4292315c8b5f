"""An unpaired digits task for CycleGAN: MNIST (domain A) <-> MNIST-M-style digits (domain B).

    python scripts/make_mnistm.py OUT/ [--mnist-root ../shared/data] [--bsds ../shared/data/sr/BSD100/HR]
                                       [--train 10000] [--test 1000] [--size 32] [--seed 0] [--overwrite]
    ganrun train experiment=cyclegan_mnistm dataset.root=OUT

Writes, as PNG files named 00000.png, 00001.png, ...:

    OUT/trainA/  --train MNIST train digits, grayscale (mode L), white on black, 28 px centred on a
                 --size canvas (zero padding; resized instead when --size < 28)
    OUT/trainB/  --train *other* MNIST train digits, MNIST-M style, RGB
    OUT/testA/   --test digits from the first half of the MNIST test split (images 0..4999), as trainA
    OUT/testB/   --test digits from the second half (images 5000..9999), as trainB
    OUT/labels/{trainA,trainB,testA,testB}.csv   "file,label", one row per PNG

Domain B follows MNIST-M (Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation",
ICML 2015, section 5; Ganin et al., JMLR 17(59), 2016): each digit is blended over a patch cut at a
random position from a random colour photo of BSDS500 with the difference blend

    out[i, j, c] = |patch[i, j, c] - digit[i, j]|        (uint8, per RGB channel)

so the background keeps the photo's colour and texture and the stroke shows as its inverse. Here
the photos are BSD100 (the 100 test photos of BSDS300, which BSDS500 keeps as its val split; same
scale, 480x320 here), and the digit is MNIST's grayscale image padded to --size, not binarized: the paper's
formula on the original digit (the widely copied pumpikano/tf-dann `create_mnistm.py` binarizes it
first, x > 0 -> 255, which only hardens the stroke's edge).

The task is unpaired: A and B never show the same MNIST image. The train digits are a seeded
permutation of the 60,000 train images, A its first --train, B the next --train; testA and testB
come from the two halves of the test split, so the test digits are never seen in training and
labels/testB.csv scores what `ganrun sample ... direction=BtoA` makes of testB (see
scripts/digit_classifier.py). Deterministic given --seed (same files, byte for byte). Needs only
numpy and Pillow; a few seconds for the defaults.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("trainA", "trainB", "testA", "testB")


class ScriptError(Exception):
    """A problem the user can fix; main() prints it on one line and exits 1."""


# helpers: reading MNIST


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format: big-endian magic, dims, then uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise ScriptError(f"{path} is truncated or not a valid IDX/gzip file ({error}); replace it") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ScriptError(f"{path} is not an IDX file of uint8 (bad magic {data[:4].hex()}); replace it")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ScriptError(f"{path} holds {body.size} values, its header says {shape}; the file is cut off, replace it")
    return body.reshape(shape)


def find_mnist_file(root: Path, stem: str) -> Path:
    """Where `stem` (or `stem.gz`) lies: torchvision's ROOT/MNIST/raw/, ROOT/raw/ or ROOT itself."""
    folders = [root / "MNIST" / "raw", root / "raw", root]
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise ScriptError(
        f"MNIST file {stem}[.gz] not found in {', '.join(str(folder) for folder in folders)}; "
        f"pass --mnist-root DIR where DIR/MNIST/raw/ (torchvision's layout) or DIR itself holds the four IDX files"
    )


def read_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST `split` ("train" or "test") as uint8 images (N, 28, 28) and int64 labels (N,)."""
    image_stem, label_stem = MNIST_FILES[split]
    images = read_idx(find_mnist_file(root, image_stem))
    labels = read_idx(find_mnist_file(root, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ScriptError(f"MNIST {split} files under {root} disagree: images {images.shape}, labels {labels.shape}; replace them")
    return images, labels.astype(np.int64)


def place_digit(digit: np.ndarray, size: int) -> np.ndarray:
    """A (28, 28) uint8 digit on a (size, size) black canvas: centred zero padding, or a resize when size < 28.

    The one preprocessing of MNIST shared by this script and scripts/digit_classifier.py.
    """
    height, width = digit.shape
    if size < max(height, width):
        return np.asarray(Image.fromarray(digit).resize((size, size), Image.BILINEAR))
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top : top + height, left : left + width] = digit
    return canvas


# helpers: backgrounds and the blend


def load_backgrounds(folder: Path, size: int) -> list[np.ndarray]:
    """Every image of `folder` as uint8 RGB (H, W, 3), sorted by name; those smaller than size x size skipped."""
    if not folder.is_dir():
        raise ScriptError(
            f"background folder {folder} not found; pass --bsds DIR with colour photos "
            f"(BSD100 is in ../shared/data/sr/BSD100/HR; BSDS500's images/train/ works too)"
        )
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    backgrounds = []
    for path in sorted(path for path in folder.iterdir() if path.suffix.lower() in suffixes):
        try:
            with Image.open(path) as image:
                photo = np.asarray(image.convert("RGB"))
        except OSError:
            print(f"skipped unreadable background {path}", file=sys.stderr)
            continue
        if photo.shape[0] >= size and photo.shape[1] >= size:
            backgrounds.append(photo)
    if not backgrounds:
        raise ScriptError(f"no readable image of at least {size}x{size} px in {folder}; pass --bsds DIR with colour photos")
    return backgrounds


def difference_blend(digit: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """MNIST-M's blend: |patch - digit| per channel; digit uint8 (S, S), patch uint8 (S, S, 3) -> uint8 (S, S, 3)."""
    return np.abs(patch.astype(np.int16) - digit.astype(np.int16)[:, :, None]).astype(np.uint8)


def random_patch(backgrounds: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size crop at a random position of a random background."""
    photo = backgrounds[rng.integers(len(backgrounds))]
    top = rng.integers(photo.shape[0] - size + 1)
    left = rng.integers(photo.shape[1] - size + 1)
    return photo[top : top + size, left : left + size]


# the script


def write_split(
    folder: Path, labels_file: Path, digits: np.ndarray, labels: np.ndarray, *, size: int,
    backgrounds: list[np.ndarray] | None, rng: np.random.Generator,
) -> None:
    """Write digits as PNG (grayscale, or MNIST-M style when backgrounds are given) and their labels CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(labels_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        for index, (digit, label) in enumerate(zip(digits, labels)):
            image = place_digit(digit, size)
            if backgrounds is not None:
                image = difference_blend(image, random_patch(backgrounds, size, rng))
            name = f"{index:05d}.png"
            Image.fromarray(image).save(folder / name)
            writer.writerow([name, int(label)])


def make_mnistm(
    out: Path, *, mnist_root: Path, bsds: Path, train: int, test: int, size: int, seed: int, overwrite: bool = False,
) -> dict[str, int]:
    """Write the four splits and their labels under `out`; returns the number of images per split."""
    if train < 1 or test < 1 or size < 8:
        raise ScriptError(f"--train and --test must be >= 1 and --size >= 8, got {train}, {test}, {size}")
    for split in SPLITS:
        if (out / split).is_dir() and any((out / split).glob("*.png")):
            if not overwrite:
                raise ScriptError(f"{out / split} already holds PNG files; pass --overwrite to replace them, or choose another OUT")
            for path in (out / split).glob("*.png"):
                path.unlink()
    backgrounds = load_backgrounds(bsds, size)
    train_images, train_labels = read_mnist(mnist_root, "train")
    test_images, test_labels = read_mnist(mnist_root, "test")
    if 2 * train > len(train_images):
        raise ScriptError(f"--train {train} needs {2 * train} distinct MNIST train digits (A and B differ); there are {len(train_images)}")
    half = len(test_images) // 2
    if test > half:
        raise ScriptError(f"--test {test} exceeds half the MNIST test split ({half}): testA and testB come from different halves")

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_images))
    test_a = rng.permutation(half)[:test]
    test_b = half + rng.permutation(len(test_images) - half)[:test]
    chosen = {
        "trainA": (train_images, train_labels, order[:train]),
        "trainB": (train_images, train_labels, order[train : 2 * train]),
        "testA": (test_images, test_labels, test_a),
        "testB": (test_images, test_labels, test_b),
    }
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for split, (images, labels, indices) in chosen.items():
        # One child generator per split, so the B patches do not depend on how many A images there are.
        split_rng = np.random.default_rng([seed, SPLITS.index(split)])
        write_split(
            out / split, out / "labels" / f"{split}.csv", images[indices], labels[indices], size=size,
            backgrounds=backgrounds if split.endswith("B") else None, rng=split_rng,
        )
    return {split: len(indices) for split, (_, _, indices) in chosen.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (gets trainA/ trainB/ testA/ testB/ labels/)")
    parser.add_argument("--mnist-root", type=Path, default=Path("../shared/data"), help="folder with MNIST/raw/*.gz (torchvision layout) or the IDX files")
    parser.add_argument("--bsds", type=Path, default=Path("../shared/data/sr/BSD100/HR"), help="folder of colour photos for the backgrounds")
    parser.add_argument("--train", type=int, default=10000, help="train images per domain")
    parser.add_argument("--test", type=int, default=1000, help="test images per domain")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (28 px digits are centred, zero padded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace PNG files already in OUT's four folders")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = make_mnistm(
            args.out, mnist_root=args.mnist_root, bsds=args.bsds, train=args.train, test=args.test,
            size=args.size, seed=args.seed, overwrite=args.overwrite,
        )
    except ScriptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for split, count in counts.items():
        kind = "MNIST, grayscale" if split.endswith("A") else "MNIST-M style, RGB"
        print(f"wrote {count:>6} images to {args.out / split}/ ({kind}, {args.size}x{args.size}); labels in {args.out / 'labels' / split}.csv")
    print(f"done in {time.perf_counter() - start:.1f} s (seed {args.seed})")
    print(f"train on it: ganrun train experiment=cyclegan_mnistm dataset.root={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
