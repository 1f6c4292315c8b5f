"""Image-to-image translation data: paired A/B images for pix2pix (Isola et al. 2017) and
unpaired A and B domains for CycleGAN (Zhu et al. 2017), read from folders a user already has.

`dataset=paired` (`load_paired`), one of three layouts:
  (a) `root=`: pix2pix's layout, root/train (and root/test or root/val, the held-out split) of
      side-by-side A|B files; `direction=BtoA` makes the right half the input. An odd width
      is an error naming the file.
  (b) `a_dir=` + `b_dir=`: two folders matched by file stem through the templates `a_name` /
      `b_name` ('{stem}_sketch' reads a/cat_sketch.png as the partner of b/cat.png).
  (c) `b_dir=` + `make_a=`: targets only, inputs made on the fly by ganrun/data/degrade.py
      (edges, grayscale, blur, noise, jpeg, or a chain of them).
  For (b) and (c) the held-out split is `test_a_dir` / `test_b_dir` when given, else the last
  `holdout` images in file order, never trained on.
`dataset=unpaired` (`load_unpaired`): `root=` with trainA/ trainB/ (testA/ testB/ optional), or
`a_dir=` + `b_dir=` (+ `test_a_dir`, `test_b_dir`).

Preprocessing (pix2pix's `--preprocess resize_and_crop`, the default): every image is resized
to load_size x load_size (bicubic, antialiased) once, at load time, and kept in memory as uint8
(N, C, load_size, load_size); training crops are random crop_size windows of those, flipped
left-right with probability 1/2 (`flip`), the same window and flip for both sides of a pair.
`preprocess=center_square` first crops the centre square of each image, so non-square photos
(faces) keep their aspect ratio. Held-out images are resized straight to crop_size (pix2pix's
test-time setting), no crop or flip. Files are decoded by ganrun's one policy
(ganrun/data/decode.py: upright, 8-bit, transparency onto `alpha_background`); grayscale files
are replicated to RGB when channels=3; unreadable files are skipped and counted in one warning.

Determinism. Epoch orders are permutations drawn from (seed, domain, epoch), one shared by all
ranks, each rank taking its slice (as DistributedSampler); paired data has one order, unpaired
A and B each their own, so their epochs run independently. An image's crop window and flip
come from a generator seeded by (seed, domain, image index, epoch), its made input
(`make_a`) from another seeded by (seed, image index, epoch): the stream's whole state is the
epoch and batch number of each order, and a resumed run draws exactly the uninterrupted one's
batches. Held-out inputs are made from generators seeded by the image's index alone, so the
test split is the same for every run, whatever its seed.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ganrun.data.decode import UNREADABLE, AlphaBackground, background_level, open_rgb_or_gray
from ganrun.data.degrade import Degradation, Spec, degradation_or_none
from ganrun.data.images import EpochCursor, ImageData, list_images, report_transparent, report_unreadable
from ganrun.errors import GanrunError
from ganrun.imaging import to_float

DIRECTIONS = ("AtoB", "BtoA")
PREPROCESS = ("resize_and_crop", "center_square")

# What each per-image generator is for: the first word of its seed, so no two purposes share a stream.
_ORDER, _CROP, _MAKE_A, _HELD_OUT = 0, 1, 2, 3
_PAIRED, _DOMAIN_A, _DOMAIN_B = 0, 1, 2
_TRAINING_GRID = 3  # the "domain" word of grid inputs made from training images (no held-out split)

# helpers


def _generator(purpose: int, seed: int, domain: int, index: int, epoch: int) -> np.random.Generator:
    """A numpy generator for one purpose. The seed is always five words: SeedSequence pads short
    entropy with zeros, so (1, 2) and (1, 2, 0) would otherwise be the same stream."""
    return np.random.default_rng([purpose, seed & 0xFFFFFFFFFFFFFFFF, domain, index, epoch])


def _held_out_generators(count: int, domain: int) -> list[np.random.Generator]:
    """The generators of held-out (and grid) inputs: by index alone, the same for every run."""
    return [_generator(_HELD_OUT, 0, domain, index, 0) for index in range(count)]


def _square(image: torch.Tensor, size: int, preprocess: str) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, size, size): the centre square first for center_square, then
    an antialiased bicubic resize (pix2pix resizes with PIL's bicubic), rounded."""
    if preprocess == "center_square":
        side = min(image.shape[-2:])
        image = TF.center_crop(image, [side, side])
    if tuple(image.shape[-2:]) == (size, size):
        return image.contiguous()
    resized = TF.resize(image.float(), [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _center(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, L, L) -> their centre size x size windows."""
    start = (images.shape[-1] - size) // 2
    return images[..., start : start + size, start : start + size]


def _folder(value: Optional[str], key: str, what: str) -> Path:
    """`value` as an existing folder; GanrunError naming `key` otherwise."""
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise GanrunError(f"{key}={value!r} is not a folder; point it at {what}")
    return folder


def _images_in(value: str, key: str, what: str) -> list[Path]:
    """The image files under folder `value` (recursive, sorted); GanrunError naming `key` when
    the folder is missing or holds none."""
    files = list_images(_folder(value, key, what))
    if not files:
        raise GanrunError(f"{key}={value!r} holds no images (.png, .jpg, ...); point it at {what}")
    return files


def _name_pattern(template: str, key: str) -> re.Pattern:
    """'{stem}_sketch' -> a regex whose group `stem` is the name both sides of a pair share."""
    if template.count("{stem}") != 1:
        raise GanrunError(f"{key}={template!r} must contain {{stem}} once, e.g. {key}='{{stem}}_sketch'")
    before, after = template.split("{stem}")
    return re.compile(f"^{re.escape(before)}(?P<stem>.+){re.escape(after)}$")


def _by_stem(files: list[Path], template: str, key: str, folder_key: str, folder: str) -> dict[str, Path]:
    """{shared stem: file} for the files named like `template`; two files of one stem are an error."""
    pattern = _name_pattern(template, key)
    found: dict[str, Path] = {}
    for path in files:
        match = pattern.match(path.stem)
        if match is None:
            continue
        if match["stem"] in found:
            raise GanrunError(
                f"{folder_key}={folder!r} holds two files for the name {match['stem']!r} ({found[match['stem']]} and "
                f"{path}); keep one"
            )
        found[match["stem"]] = path
    if not found:
        raise GanrunError(f"{folder_key}={folder!r} holds no images named like {key}={template!r}; check {key}")
    return found


def match_stems(
    a_files: list[Path], b_files: list[Path], *, a_name: str, b_name: str, a_dir: str, b_dir: str,
    a_key: str = "dataset.a_dir", b_key: str = "dataset.b_dir",
) -> list[tuple[str, Path, Path]]:
    """(shared stem, A file, B file) for every pair, in B's file order. Raises GanrunError naming
    an example and the count when a file of either folder has no partner."""
    a_by_stem = _by_stem(a_files, a_name, "dataset.a_name", a_key, a_dir)
    b_by_stem = _by_stem(b_files, b_name, "dataset.b_name", b_key, b_dir)
    templates = f"check dataset.a_name / dataset.b_name (now {a_name!r} / {b_name!r})"
    for own, other, own_key, other_key, other_dir, other_name in (
        (b_by_stem, a_by_stem, b_key, a_key, a_dir, a_name),
        (a_by_stem, b_by_stem, a_key, b_key, b_dir, b_name),
    ):
        missing = [stem for stem in own if stem not in other]
        if missing:
            raise GanrunError(
                f"{own[missing[0]]} has no partner {other_name.format(stem=missing[0])}.* in {other_key}={other_dir!r} "
                f"({len(missing)} of {len(own)} images of {own_key} unmatched); {templates}"
            )
    return [(stem, a_by_stem[stem], b_path) for stem, b_path in b_by_stem.items()]


@dataclass
class _Loaded:
    """What reading a list of items gave: one uint8 (N, C, size, size) tensor per side, the names."""

    sides: list[torch.Tensor]
    names: list[str]


def _read_items(
    items: list[tuple[str, tuple[Path, ...]]], *, size: int, preprocess: str, channels: int,
    alpha_background: AlphaBackground, side_by_side: bool, what: str, items_word: str = "images",
) -> _Loaded:
    """Decode every item (a name and its one or two files) once, in threads, to `size` x `size`.
    `side_by_side`: each item is one A|B file split at half its width (an odd width is a
    GanrunError naming the file). Items with an unreadable file are skipped and counted in one
    warning; GanrunError when none is left."""

    def read(item: tuple[str, tuple[Path, ...]]) -> tuple[Optional[list[torch.Tensor]], list[Path], list[Path]]:
        decoded = {}
        for path in item[1]:
            try:
                decoded[path] = open_rgb_or_gray(path, channels=channels, alpha_background=alpha_background)
            except UNREADABLE:
                return None, [path], []
        transparent = [path for path, result in decoded.items() if result.transparent]
        images = [TF.pil_to_tensor(result.image) for result in decoded.values()]
        if side_by_side:
            (image,), path = images, item[1][0]
            width = image.shape[-1]
            if width % 2:
                raise GanrunError(
                    f"{path} is {width}x{image.shape[-2]}: a side-by-side A|B image needs an even width; "
                    "fix or remove the file"
                )
            images = [image[..., : width // 2], image[..., width // 2 :]]
        return [_square(image, size, preprocess) for image in images], [], transparent

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(read, items))
    report_unreadable([path for _, bad, _ in results for path in bad], len(items), items=items_word)
    kept = [(name, images) for (name, _), (images, _, _) in zip(items, results) if images is not None]
    if items and not kept:
        raise GanrunError(f"none of the {len(items)} {items_word} of {what} could be read; check the files")
    report_transparent([path for _, _, paths in results for path in paths], len(kept), alpha_background)
    if not kept:
        return _Loaded(sides=[], names=[])
    sides = [torch.stack([images[side] for _, images in kept]) for side in range(len(kept[0][1]))]
    return _Loaded(sides=sides, names=[name for name, _ in kept])


def _check_settings(*, channels: int, load_size: int, crop_size: int, preprocess: str,
                    alpha_background: AlphaBackground) -> None:
    if channels not in (1, 3):
        raise GanrunError(f"dataset.channels must be 1 or 3, got {channels}")
    if preprocess not in PREPROCESS:
        raise GanrunError(f"dataset.preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    if crop_size < 4:
        raise GanrunError(f"dataset.crop_size must be at least 4, got {crop_size}")
    if load_size < crop_size:
        raise GanrunError(f"dataset.load_size={load_size} must be >= dataset.crop_size={crop_size}, e.g. {crop_size + crop_size // 8}")
    background_level(alpha_background)


def _size_note(load_size: int, crop_size: int, preprocess: str) -> str:
    crops = f"{crop_size} px crops of {load_size} px" if load_size > crop_size else f"{crop_size} px"
    return crops + (" centre squares" if preprocess == "center_square" else "")


class _EpochOrder(EpochCursor):
    """Which images one rank's batches take: epoch by epoch a permutation drawn from (seed,
    domain, epoch), shared by every rank and sliced rank::world_size (DistributedSampler's
    split), cut into batches, the last partial batch dropped. State: (epoch, position)."""

    def __init__(self, count: int, *, batch_size: int, seed: int, domain: int, rank: int, world_size: int, what: str):
        super().__init__(count, batch_size=batch_size, world_size=world_size, what=what)
        self.count, self.seed, self.domain = count, seed, domain
        self.rank, self.world_size = rank, world_size
        self._order: Optional[tuple[int, np.ndarray]] = None

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's image indices of `epoch`, (batches_per_epoch * batch_size,)."""
        order = _generator(_ORDER, self.seed, self.domain, 0, epoch).permutation(self.count)
        mine = order[: (self.count // self.world_size) * self.world_size][self.rank :: self.world_size]
        return mine[: self.batches_per_epoch * self.batch_size]

    def next(self) -> tuple[int, np.ndarray]:
        """(epoch, the next batch's image indices), advancing the position."""
        epoch, position = self.advance()
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.indices(epoch))
        start = position * self.batch_size
        return epoch, self._order[1][start : start + self.batch_size]

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._order = None


def random_crops(
    sides: Sequence[torch.Tensor], indices: Sequence[int], *, crop_size: int, flip: bool, seed: int, domain: int,
    epoch: int,
) -> list[torch.Tensor]:
    """uint8 crops (len(indices), C, crop_size, crop_size) of each tensor of `sides` (N, C, L, L):
    image i's window and flip from the generator of (seed, domain, i, epoch), the same for every
    side (aligned pairs). Three draws per image whether or not `flip`, so turning flips off keeps
    the windows."""
    load_size = sides[0].shape[-1]
    crops: list[list[torch.Tensor]] = [[] for _ in sides]
    for index in indices:
        generator = _generator(_CROP, seed, domain, int(index), epoch)
        top, left = (int(value) for value in generator.integers(0, load_size - crop_size + 1, size=2))
        flipped = bool(generator.random() < 0.5) and flip
        for side, out in zip(sides, crops):
            crop = side[index, :, top : top + crop_size, left : left + crop_size]
            out.append(crop.flip(-1) if flipped else crop)
    return [torch.stack(out) for out in crops]


# classes


@dataclass(frozen=True)
class TestSplit:
    """The held-out images of a translation dataset, at crop_size x crop_size (resized straight
    to it, pix2pix's test setting), uint8 (C, H, W). Paired: a[i] is the input of target b[i]
    (inputs made by make_a are made here, by index, the same for every run)."""

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name

    a: list[torch.Tensor]
    b: list[torch.Tensor]
    names_a: list[str]
    names_b: list[str]
    paired: bool
    source: str  # one line: which folder or split, how many


@dataclass
class PairedData(ImageData):
    """`ImageData` of aligned pairs for pix2pix: training images at load_size, held-out pairs at
    crop_size, the batch stream (`batches`), grid examples and the test split. A (`a`) is the
    left half / a_dir / made by `make_a`, B (`b`) the right half / b_dir; `direction=BtoA` swaps
    them wherever they leave this object."""

    kind: ClassVar[str] = "paired"
    a: Optional[torch.Tensor] = None  # uint8 (N, C, load_size, load_size); None when made by make_a
    b: Optional[torch.Tensor] = None  # uint8 (N, C, load_size, load_size)
    names: list[str] = field(default_factory=list)
    held_a: Optional[torch.Tensor] = None  # uint8 (M, C, crop_size, crop_size); None when made or no split
    held_b: Optional[torch.Tensor] = None
    held_names: list[str] = field(default_factory=list)
    held_source: str = ""
    make_a: Optional[Degradation] = None
    direction: str = "AtoB"
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    _made_held_a: Optional[torch.Tensor] = field(default=None, init=False, repr=False)  # cache of _held_inputs

    def __len__(self) -> int:
        return len(self.b)

    def batches(self, **settings) -> "PairedBatches":
        return PairedBatches(data=self, **settings)

    def orient(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target): (a, b) for AtoB, (b, a) for BtoA."""
        return (a, b) if self.direction == "AtoB" else (b, a)

    def crops(self, indices: Sequence[int], *, epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (input, target) training crops of `indices` in `epoch`: aligned windows and flips,
        inputs made from the target crops when make_a is set."""
        sides = [self.b] if self.a is None else [self.a, self.b]
        crops = random_crops(sides, indices, crop_size=self.crop_size, flip=self.flip, seed=seed, domain=_PAIRED,
                             epoch=epoch)
        if self.make_a is None:
            return self.orient(crops[0], crops[1])
        generators = [_generator(_MAKE_A, seed, _PAIRED, int(index), epoch) for index in indices]
        return self.orient(self.make_a(crops[0], generators), crops[0])

    def _held_inputs(self) -> Optional[torch.Tensor]:
        """The held-out A images: loaded, or made once (by index) and kept."""
        if self.held_b is None or self.make_a is None:
            return self.held_a
        if self._made_held_a is None:
            generators = _held_out_generators(len(self.held_b), _PAIRED)
            self._made_held_a = torch.cat([self.make_a(chunk, generators[start : start + len(chunk)])
                                           for start, chunk in zip(range(0, len(self.held_b), 64), self.held_b.split(64))])
        return self._made_held_a

    def _examples(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (input, target) of the first `count` held-out pairs, else the training images' centres."""
        if self.held_b is not None:
            return self.orient(self._held_inputs()[:count], self.held_b[:count])
        b = _center(self.b[:count], self.crop_size)
        if self.a is not None:
            return self.orient(_center(self.a[:count], self.crop_size), b)
        return self.orient(self.make_a(b, _held_out_generators(len(b), _TRAINING_GRID)), b)

    def grid_examples(self, count: int) -> dict[str, torch.Tensor]:
        """{"A": inputs, "B": targets}, float (n, C, S, S) in [-1, 1], n = max(1, count // 3)
        (grid rows input | output | target): held-out pairs, else training centre crops; fixed."""
        a, b = self._examples(max(1, count // 3))
        return {"A": to_float(a), "B": to_float(b)}

    def first_images(self, count: int) -> torch.Tensor:
        """The targets of the first `count` held-out pairs (training centre crops when there is no
        split), float (n, C, S, S) in [-1, 1]: the run's real.png."""
        return to_float(self._examples(count)[1])

    def test_split(self) -> TestSplit:
        """The held-out pairs, oriented by `direction`. Raises GanrunError when there are none."""
        if self.held_b is None:
            raise GanrunError(
                f"the paired data has no held-out split ({self.held_source}); give dataset.test_a_dir/test_b_dir, "
                "a root with test/ or val/, or dataset.holdout > 0"
            )
        a, b = self.orient(self._held_inputs(), self.held_b)
        return TestSplit(a=list(a), b=list(b), names_a=list(self.held_names), names_b=list(self.held_names), paired=True,
                         source=self.held_source)


def load_paired(
    *,
    name: str = "paired",
    root: Optional[str] = None,
    direction: str = "AtoB",
    a_dir: Optional[str] = None,
    b_dir: Optional[str] = None,
    a_name: str = "{stem}",
    b_name: str = "{stem}",
    make_a: Spec = None,
    test_a_dir: Optional[str] = None,
    test_b_dir: Optional[str] = None,
    holdout: int = 200,
    preprocess: str = "resize_and_crop",
    load_size: int = 286,
    crop_size: int = 256,
    flip: bool = True,
    channels: int = 3,
    num_classes: int = 0,
    alpha_background: AlphaBackground = "white",
) -> PairedData:
    """Aligned pairs for pix2pix from (a) `root` (side-by-side A|B files in train/, test/ or val/),
    (b) `a_dir` + `b_dir` matched by stem, or (c) `b_dir` + `make_a` (see the module docstring).

    Raises GanrunError, one line naming the key and the fix, for: a mix of layouts, a missing or
    empty folder, an odd-width A|B file, unmatched stems, a bad maker, `holdout` that leaves no
    training images, and bad sizes.
    """
    _check_settings(channels=channels, load_size=load_size, crop_size=crop_size, preprocess=preprocess,
                    alpha_background=alpha_background)
    if direction not in DIRECTIONS:
        raise GanrunError(f"dataset.direction must be AtoB or BtoA, got {direction!r}")
    if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 0:
        raise GanrunError(f"dataset.holdout must be a whole number >= 0 (0: no held-out split), got {holdout!r}")
    degradation = degradation_or_none(make_a, channels=channels)
    read = dict(preprocess=preprocess, channels=channels, alpha_background=alpha_background)

    if root is not None:  # (a) pix2pix's side-by-side files
        if a_dir is not None or b_dir is not None or make_a is not None:
            raise GanrunError("dataset.root (side-by-side A|B files) goes alone; drop dataset.a_dir / b_dir / make_a, "
                              "or drop dataset.root to read two folders")
        base = _folder(root, "dataset.root", "pix2pix's layout: train/ (and test/ or val/) of side-by-side A|B images")
        layout = "root, " + direction
        train_files = _split_files(base, root, "train", "the side-by-side A|B training images")
        held_files, held_folder = [], None
        for split in ("test", "val"):  # pix2pix's held-out split: test/, else val/
            if (base / split).is_dir() and (held_files := list_images(base / split)):
                held_folder = base / split
                break
        train = _read_items([(path.stem, (path,)) for path in train_files], size=load_size, side_by_side=True,
                            what=f"{base / 'train'}", **read)
        held = None
        if held_folder is not None:
            held = _read_items([(path.stem, (path,)) for path in held_files], size=crop_size, side_by_side=True,
                               what=str(held_folder), **read)
        held_source = f"{held_folder} ({len(held.names):,} pairs)" if held else f"none: {base} has no test/ or val/ images"
        train_a, train_b, where = train.sides[0], train.sides[1], str(base / "train")
    else:
        if b_dir is None:
            raise GanrunError("dataset=paired needs dataset.root=DIR (side-by-side A|B files), dataset.a_dir + dataset.b_dir "
                              "(two folders matched by name), or dataset.b_dir + dataset.make_a=edges (inputs made on the fly)")
        if (a_dir is None) == (make_a is None):
            raise GanrunError(
                "dataset.b_dir needs exactly one source of inputs: dataset.a_dir (files matched by name) or dataset.make_a "
                f"(edges, grayscale, blur, noise, jpeg); now a_dir={a_dir!r}, make_a={make_a!r}"
            )
        b_files = _images_in(b_dir, "dataset.b_dir", "the target images (domain B)")
        if a_dir is not None:  # (b) two folders matched by stem
            layout = "a_dir + b_dir"
            a_files = _images_in(a_dir, "dataset.a_dir", "the input images (domain A)")
            items = [(stem, (a_path, b_path)) for stem, a_path, b_path in
                     match_stems(a_files, b_files, a_name=a_name, b_name=b_name, a_dir=a_dir, b_dir=b_dir)]
        else:  # (c) inputs made from the targets
            layout = f"b_dir + make_a={degradation.describe()}"
            if test_a_dir is not None:
                raise GanrunError("dataset.test_a_dir is not read when dataset.make_a makes the inputs; drop it "
                                  "(held-out inputs are made from dataset.test_b_dir)")
            items = [(path.stem, (path,)) for path in b_files]
        held_items, held_source = [], ""
        if test_a_dir is not None or test_b_dir is not None:
            if test_b_dir is None or (a_dir is not None and test_a_dir is None):
                missing = "dataset.test_b_dir" if test_b_dir is None else "dataset.test_a_dir"
                raise GanrunError(f"the held-out split needs {missing} too (test_a_dir and test_b_dir go together)")
            test_b = _images_in(test_b_dir, "dataset.test_b_dir", "the held-out target images")
            if a_dir is not None:
                test_a = _images_in(test_a_dir, "dataset.test_a_dir", "the held-out input images")
                held_items = [(stem, (a_path, b_path)) for stem, a_path, b_path in
                              match_stems(test_a, test_b, a_name=a_name, b_name=b_name, a_dir=test_a_dir, b_dir=test_b_dir,
                                          a_key="dataset.test_a_dir", b_key="dataset.test_b_dir")]
            else:
                held_items = [(path.stem, (path,)) for path in test_b]
            held_source = f"{test_b_dir} (dataset.test_b_dir)"
        elif holdout:
            if holdout >= len(items):
                raise GanrunError(
                    f"dataset.holdout={holdout} leaves no training images of the {len(items):,} in dataset.b_dir={b_dir!r}; "
                    "lower it (0: no held-out split) or give dataset.test_b_dir"
                )
            items, held_items = items[:-holdout], items[-holdout:]
            held_source = f"the last {holdout:,} images of {b_dir} in file order (dataset.holdout)"
        else:
            held_source = "none: dataset.holdout=0 and no dataset.test_b_dir"
        items_word = "pairs" if a_dir is not None else "images"
        train = _read_items(items, size=load_size, side_by_side=False, what=f"dataset.b_dir={b_dir!r}",
                            items_word=items_word, **read)
        held = None
        if held_items:
            held = _read_items(held_items, size=crop_size, side_by_side=False, what=held_source, items_word=items_word,
                               **read)
            held_source = f"{held_source}, {len(held.names):,} {items_word}"
        train_a = train.sides[0] if a_dir is not None else None
        train_b, where = train.sides[-1], b_dir
    held_count = len(held.names) if held else 0
    source = (f"paired ({layout}): {len(train.names):,} train / {held_count:,} held-out "
              f"{'images' if make_a is not None else 'pairs'} from {where}, {_size_note(load_size, crop_size, preprocess)}")
    return PairedData(
        source=source, resolution=crop_size, channels=channels, alpha_background=alpha_background,
        a=train_a, b=train_b, names=train.names,
        held_a=(held.sides[0] if held and make_a is None else None), held_b=(held.sides[-1] if held else None),
        held_names=held.names if held else [], held_source=held_source,
        make_a=degradation, direction=direction, load_size=load_size, crop_size=crop_size, flip=flip,
    )


class PairedBatches:
    """Endless, resumable stream of aligned crops `{"A": inputs, "B": targets}`, float
    (N, C, S, S) in [-1, 1] on `device`. State: the epoch and batch number."""

    def __init__(
        self,
        *,
        data: PairedData,
        batch_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        **_: object,  # num_workers: crops are cut in this process, from images in memory
    ):
        self.data, self.seed, self.device, self.channels_last = data, seed, device, channels_last
        self.order = _EpochOrder(len(data), batch_size=batch_size, seed=seed, domain=_PAIRED, rank=rank,
                                 world_size=world_size, what=f"the paired training set ({data.source})")

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)

    def rebatch(self, *, old_batch_size: int, new_batch_size: int) -> None:
        """See _EpochOrder.rebatch."""
        self.order.rebatch(old_batch_size=old_batch_size, new_batch_size=new_batch_size)

    def __iter__(self) -> "PairedBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        epoch, indices = self.order.next()
        a, b = self.data.crops(indices, epoch=epoch, seed=self.seed)
        return {"A": _to_device(a, self.device, self.channels_last), "B": _to_device(b, self.device, self.channels_last)}


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = to_float(images.to(device, non_blocking=True))
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@dataclass
class UnpairedData(ImageData):
    """`ImageData` of two unpaired domains for CycleGAN: training images of A and B at load_size,
    optional held-out testA / testB at crop_size, the batch stream, grid examples, test split."""

    kind: ClassVar[str] = "unpaired"
    a: Optional[torch.Tensor] = None  # uint8 (N_A, C, load_size, load_size)
    b: Optional[torch.Tensor] = None  # uint8 (N_B, C, load_size, load_size)
    names_a: list[str] = field(default_factory=list)
    names_b: list[str] = field(default_factory=list)
    held_a: Optional[torch.Tensor] = None  # uint8 (M_A, C, crop_size, crop_size) or None
    held_b: Optional[torch.Tensor] = None
    held_names_a: list[str] = field(default_factory=list)
    held_names_b: list[str] = field(default_factory=list)
    held_source: str = ""
    missing_held: str = ""  # which held-out folder is absent, for test_split's error
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))  # an "epoch" of the larger domain, as CycleGAN's dataset counts

    def batches(self, **settings) -> "UnpairedBatches":
        return UnpairedBatches(data=self, **settings)

    def crops(self, domain: str, indices: Sequence[int], *, epoch: int, seed: int) -> torch.Tensor:
        """uint8 training crops of domain "A" or "B", (len(indices), C, S, S)."""
        images, tag = (self.a, _DOMAIN_A) if domain == "A" else (self.b, _DOMAIN_B)
        return random_crops([images], indices, crop_size=self.crop_size, flip=self.flip, seed=seed, domain=tag,
                            epoch=epoch)[0]

    def _examples(self, domain: str, count: int) -> torch.Tensor:
        held, train = (self.held_a, self.a) if domain == "A" else (self.held_b, self.b)
        return held[:count] if held is not None else _center(train[:count], self.crop_size)

    def grid_examples(self, count: int) -> dict[str, torch.Tensor]:
        """{"A": n of testA, "B": n of testB} (training centre crops for a domain without a test
        folder), float (n, C, S, S) in [-1, 1], n = max(1, count // 6) (rows of 6 images)."""
        n = max(1, count // 6)
        a, b = self._examples("A", n), self._examples("B", n)
        n = min(len(a), len(b))
        return {"A": to_float(a[:n]), "B": to_float(b[:n])}

    def first_images(self, count: int) -> torch.Tensor:
        """The first count // 2 images of A, then count - count // 2 of B (test folders, else
        training centre crops), float in [-1, 1]: the run's real.png."""
        return to_float(torch.cat([self._examples("A", count // 2), self._examples("B", count - count // 2)]))

    def test_split(self) -> TestSplit:
        """testA and testB (unpaired). Raises GanrunError when either is missing."""
        if self.held_a is None or self.held_b is None:
            raise GanrunError(f"the unpaired data has no held-out split: {self.missing_held}")
        return TestSplit(a=list(self.held_a), b=list(self.held_b), names_a=list(self.held_names_a),
                         names_b=list(self.held_names_b), paired=False, source=self.held_source)


def load_unpaired(
    *,
    name: str = "unpaired",
    root: Optional[str] = None,
    a_dir: Optional[str] = None,
    b_dir: Optional[str] = None,
    test_a_dir: Optional[str] = None,
    test_b_dir: Optional[str] = None,
    preprocess: str = "resize_and_crop",
    load_size: int = 286,
    crop_size: int = 256,
    flip: bool = True,
    channels: int = 3,
    num_classes: int = 0,
    alpha_background: AlphaBackground = "white",
) -> UnpairedData:
    """Two unpaired domains for CycleGAN from `root` (trainA/ trainB/, optional testA/ testB/) or
    `a_dir` + `b_dir` (optional `test_a_dir`, `test_b_dir`).

    Raises GanrunError, one line naming the key and the fix, for a mix of layouts, a missing or
    empty folder or domain, and bad sizes.
    """
    _check_settings(channels=channels, load_size=load_size, crop_size=crop_size, preprocess=preprocess,
                    alpha_background=alpha_background)
    read = dict(preprocess=preprocess, channels=channels, alpha_background=alpha_background)
    held_files: dict[str, list[Path]] = {}
    if root is not None:
        if any(value is not None for value in (a_dir, b_dir, test_a_dir, test_b_dir)):
            raise GanrunError("dataset.root (trainA/ trainB/ testA/ testB/) goes alone; drop dataset.a_dir / b_dir / "
                              "test_a_dir / test_b_dir, or drop dataset.root")
        base = _folder(root, "dataset.root", "CycleGAN's layout: trainA/ trainB/ (and testA/ testB/)")
        folders = {side: str(base / f"train{side}") for side in "AB"}
        train_files = {side: _split_files(base, root, f"train{side}", f"the domain {side} images") for side in "AB"}
        held_folders = {side: str(base / f"test{side}") for side in "AB"}
        for side in "AB":  # optional: an absent or empty testA/ means no held-out A
            if (base / f"test{side}").is_dir() and (files := list_images(base / f"test{side}")):
                held_files[side] = files
        absent = {side: f"{base / f'test{side}'}/" for side in "AB"}
        where = str(base)
    else:
        if a_dir is None or b_dir is None:
            raise GanrunError("dataset=unpaired needs dataset.root=DIR (trainA/ trainB/ testA/ testB/) or both "
                              f"dataset.a_dir and dataset.b_dir; now a_dir={a_dir!r}, b_dir={b_dir!r}")
        folders = {"A": a_dir, "B": b_dir}
        train_files = {side: _images_in(folders[side], f"dataset.{side.lower()}_dir", f"the domain {side} images")
                       for side in "AB"}
        held_folders = {"A": test_a_dir, "B": test_b_dir}
        for side, folder in held_folders.items():
            if folder is not None:
                held_files[side] = _images_in(folder, f"dataset.test_{side.lower()}_dir", f"the held-out domain {side} images")
        absent = {side: f"dataset.test_{side.lower()}_dir" for side in "AB"}
        where = f"{a_dir} and {b_dir}"
    train = {side: _read_items([(path.stem, (path,)) for path in train_files[side]], size=load_size, side_by_side=False,
                               what=f"{folders[side]} (domain {side})", **read) for side in "AB"}
    held = {side: _read_items([(path.stem, (path,)) for path in files], size=crop_size, side_by_side=False,
                              what=f"{held_folders[side]} (held-out {side})", **read) for side, files in held_files.items()}
    missing = [absent[side] for side in "AB" if side not in held]
    missing_held = f"no {' or '.join(missing)}; add {'them' if len(missing) > 1 else 'it'} to evaluate" if missing else ""
    held_source = "; ".join(f"{len(held[side].names):,} {side} from {held_folders[side]}" for side in "AB" if side in held)
    counts = f"{len(train['A'].names):,} A / {len(train['B'].names):,} B train"
    if held:
        counts += " / " + " + ".join(f"{len(held[side].names):,} {side}" for side in "AB" if side in held) + " held-out"
    source = f"unpaired: {counts} images from {where}, {_size_note(load_size, crop_size, preprocess)}"
    return UnpairedData(
        source=source, resolution=crop_size, channels=channels, alpha_background=alpha_background,
        a=train["A"].sides[0], b=train["B"].sides[0], names_a=train["A"].names, names_b=train["B"].names,
        held_a=held["A"].sides[0] if "A" in held else None, held_b=held["B"].sides[0] if "B" in held else None,
        held_names_a=held["A"].names if "A" in held else [], held_names_b=held["B"].names if "B" in held else [],
        held_source="; ".join(filter(None, (held_source, missing_held))), missing_held=missing_held,
        load_size=load_size, crop_size=crop_size, flip=flip,
    )


def _split_files(base: Path, root: str, name: str, what: str) -> list[Path]:
    """The images of root/NAME; GanrunError naming dataset.root when the folder is absent or empty."""
    if not (base / name).is_dir():
        raise GanrunError(f"dataset.root={root!r} has no {name}/ folder for {what}; check the layout or dataset.root")
    files = list_images(base / name)
    if not files:
        raise GanrunError(f"dataset.root={root!r}: {name}/ holds no images (.png, .jpg, ...); put {what} there")
    return files


class UnpairedBatches:
    """Endless, resumable stream `{"A": crops of A, "B": crops of B}`, float (N, C, S, S) in
    [-1, 1] on `device`, the two domains drawn independently (each its own epoch order).
    State: the epoch and batch number of each domain."""

    def __init__(
        self,
        *,
        data: UnpairedData,
        batch_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        **_: object,  # num_workers: crops are cut in this process, from images in memory
    ):
        self.data, self.seed, self.device, self.channels_last = data, seed, device, channels_last
        self.orders = {
            side: _EpochOrder(len(images), batch_size=batch_size, seed=seed, domain=tag, rank=rank, world_size=world_size,
                              what=f"domain {side} ({data.source})")
            for side, images, tag in (("A", data.a, _DOMAIN_A), ("B", data.b, _DOMAIN_B))
        }

    def state_dict(self) -> dict:
        return {side: order.state_dict() for side, order in self.orders.items()}

    def load_state_dict(self, state: dict) -> None:
        for side, order in self.orders.items():
            order.load_state_dict(state[side])

    def rebatch(self, *, old_batch_size: int, new_batch_size: int) -> None:
        """See _EpochOrder.rebatch: each domain's position is converted on its own."""
        for order in self.orders.values():
            order.rebatch(old_batch_size=old_batch_size, new_batch_size=new_batch_size)

    def __iter__(self) -> "UnpairedBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = {}
        for side, order in self.orders.items():
            epoch, indices = order.next()
            batch[side] = _to_device(self.data.crops(side, indices, epoch=epoch, seed=self.seed), self.device,
                                     self.channels_last)
        return batch

