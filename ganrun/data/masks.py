"""Inpainting masks: the holes made on the fly for training, the fixed evaluation set, and the
holes a user marks for `ganrun sample`.

A mask is float (N, 1, H, W) with values exactly 0.0 or 1.0, **1 = hole** (pixels to fill),
0 = valid (kept); on disk uint8, white (>= 128) = hole: the convention of every inpainting part
(data, recipe, task).
Functions that return one mask give numpy bool (H, W) or torch bool (1, H, W).

| kind | what it draws | source of the shape and its defaults |
|---|---|---|
| `free_form` | 1-3 brush strokes, each a zig-zag polyline of 4-11 vertices drawn with a round brush; the mask flipped left-right / top-bottom at random | DeepFill v2 (Yu et al., ICCV 2019, "Free-Form Image Inpainting with Gated Convolution"), `brush_stroke_mask` / `generate_mask` of github.com/JiahuiYu/generative_inpainting, = mmagic's `brush_stroke_mask` defaults |
| `box` | 1-3 axis-aligned rectangles | LaMa (Suvorov et al., WACV 2022) `make_random_rectangle_mask`: margin 10, sides 30-100 px at 256 px (LaMa draws 0-3; 0 would be no hole) |
| `mix` | each image picks `free_form` or `box`, probability 1/2 each | - |
| `folder` | a user's mask drawn at random, resized (nearest) to the image size, then one of the 8 flips/rotations by 90 degrees at random | partial conv (Liu et al., ECCV 2018) trains on a folder of masks with random dilation, rotation and cropping |

Resolution: the reference is tuned for 256 px. Stroke lengths are already relative there (mean
segment length = image diagonal / 8); widths, box sides and margins are scaled by size / 256,
with floors (2 px brush, 2 px box side) so 32-64 px masks keep visible holes.

Hole fraction (`mask_ratio=(low, high)`, inclusive, 0 < low <= high < 1): in pixels, the hole
count lies in [ceil(low N), floor(high N)] of the N pixels (at least 1 hole, at least 1 valid
pixel). How it is enforced, bounded, never a loop without end:
1. draw the reference's number of shapes (1-3 strokes or boxes);
2. while the hole count is below ceil(low N), draw another shape, at most 32 shapes in all;
3. a shape that would push the count above floor(high N) is trimmed to fit: a stroke keeps its
   segments up to the one that overflows, and of that segment the pixels nearest its start (a
   shorter stroke); a box keeps its top rows (a shorter box);
4. still below after 32 shapes (only for large `low`): the hole grows by one-pixel rings (3x3
   dilation), the last ring a random subset of itself, to exactly ceil(low N).
When the range holds no whole pixel count (high - low < 1/N), the count nearest to low N is used.
The reference generator has no ratio control; mmagic's irregular masks redraw until the ratio
fits, without a bound (`get_irregular_mask`).

Folder masks are used as they are: `mask_ratio` is not applied to them (trimming or growing a
user's drawing would change what it means); `describe()` says so.

Randomness: the training masks come from `numpy.random.default_rng([seed, index, epoch])`, one
generator per image, so an image's mask depends on (seed, index, epoch) alone, never on its batch,
and a resumed run draws exactly the masks of an uninterrupted one. Evaluation masks come from
`default_rng([seed, EVALUATION_STREAM, bucket, i])`: a 4-entry seed, never one of the training
sequences.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from ganrun.data.decode import UNREADABLE, open_rgb_or_gray
from ganrun.data.images import list_images, report_unreadable, warn
from ganrun.errors import GanrunError

KINDS = ("free_form", "box", "mix", "folder")
GENERATED_KINDS = ("free_form", "box", "mix")
REFERENCE_SIZE = 256  # the resolution DeepFill v2's and LaMa's pixel constants are tuned for
HOLE_LEVEL = 128  # uint8 masks: >= 128 is a hole; alpha < 128 is a hole
MAX_SHAPES = 32  # strokes or boxes per mask before the ring-growth fallback (step 4 above)

# DeepFill v2's brush (generate_mask in JiahuiYu/generative_inpainting, mmagic brush_stroke_mask):
# np.random.randint(1, 4) strokes, randint(4, 12) vertices, widths uniform in [12, 40) at 256 px.
STROKES = (1, 3)
VERTICES = (4, 11)
MEAN_ANGLE = 2 * math.pi / 5
ANGLE_RANGE = 2 * math.pi / 15
BRUSH_WIDTH = (12.0, 40.0)
MIN_BRUSH_WIDTH = 2.0  # ours: at 32 px the scaled 12 px brush would be 1.5 px, a hairline

# LaMa's rectangles (make_random_rectangle_mask), at 256 px.
BOXES = (1, 3)
BOX_SIDE = (30, 100)
BOX_MARGIN = 10

# The hole-size buckets of partial conv (Liu et al. 2018, Table 1) and LaMa: (low, high], so a
# mask of exactly 20 % holes is in 10-20 %; the first bucket excludes 0 (a mask with no hole).
BUCKETS: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))
EVALUATION_STREAM = 7  # the second entry of an evaluation mask's seed: apart from [seed, index, epoch]
GENERATOR_VERSION = 1  # bump when a change to this file changes the masks drawn for a seed

Ratio = tuple[float, float]
Counts = tuple[int, int]
PathLike = Union[str, Path]


# helpers


def check_mask_ratio(value: Any, key: str = "dataset.mask_ratio") -> Ratio:
    """[low, high] with 0 < low <= high < 1 -> (low, high). Raises a one-line GanrunError naming
    `key`, the value and an example of a good one."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    numbers = values is not None and len(values) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not numbers or not 0 < values[0] <= values[1] < 1:
        raise GanrunError(
            f"{key} must be two hole fractions [low, high] with 0 < low <= high < 1, got {value!r}; "
            f"e.g. {key}=[0.1,0.5]"
        )
    return float(values[0]), float(values[1])


def check_kind(kind: Any, key: str = "dataset.masks", kinds: Sequence[str] = KINDS) -> str:
    if kind not in kinds:
        raise GanrunError(f"{key} must be one of {', '.join(kinds)}, got {kind!r}")
    return kind


def _pixels_of(fraction: float, pixels: int) -> float:
    return round(fraction * pixels, 6)  # 0.3 * 1000 is 300.00000000000006: not 301 pixels


def hole_counts(low: float, high: float, pixels: int, *, exclusive_low: bool = False) -> Counts:
    """The whole hole counts (lo, hi) of `pixels` pixels whose fraction lies in [low, high]
    ((low, high] when `exclusive_low`), at least 1 hole and 1 valid pixel. An empty range
    (high - low < 1 / pixels) becomes the count nearest to low * pixels."""
    lo = math.floor(_pixels_of(low, pixels)) + 1 if exclusive_low else math.ceil(_pixels_of(low, pixels))
    lo, hi = max(lo, 1), min(math.floor(_pixels_of(high, pixels)), pixels - 1)
    if lo > hi:
        lo = hi = min(max(round(low * pixels), 1), pixels - 1)
    return lo, hi


def hole_fraction(masks: torch.Tensor) -> torch.Tensor:
    """float or bool (N, 1, H, W) -> float (N,): the fraction of hole pixels of each mask."""
    return masks.flatten(1).float().mean(1)


def bucket_name(low: float, high: float) -> str:
    """(0.1, 0.2) -> '10-20%': the keys of `evaluation_masks`."""
    return f"{round(low * 100)}-{round(high * 100)}%"


def _clip(value: float, low: float, high: float) -> float:
    return min(max(float(value), low), high)  # np.clip on a scalar costs microseconds, per vertex


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of a bool (H, W) array (separable: rows, then columns)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    rows = grown.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown


def _grow(mask: np.ndarray, missing: int, rng: np.random.Generator) -> None:
    """Add exactly `missing` hole pixels to `mask` in place: whole one-pixel rings around the
    hole, the last ring a random subset. Each ring adds at least one pixel while any valid pixel
    is left, so this ends within max(H, W) rings."""
    if not mask.any():  # nothing to grow from (cannot happen after a shape; kept for safety)
        mask.flat[rng.integers(mask.size)] = True
        missing -= 1
    while missing > 0:
        ring = _dilate(mask) & ~mask
        ys, xs = np.nonzero(ring)
        if len(ys) > missing:
            keep = rng.permutation(len(ys))[:missing]
            ys, xs = ys[keep], xs[keep]
        mask[ys, xs] = True
        missing -= len(ys)


def _first(new: np.ndarray, room: int, origin: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The `room` pixels of bool `new` nearest to `origin` (x, y), or first in row order when
    `origin` is None, as a bool array of new's shape."""
    ys, xs = np.nonzero(new)  # row order
    if origin is not None:
        ys_xs = np.argsort((ys - origin[1]) ** 2 + (xs - origin[0]) ** 2, kind="stable")
        ys, xs = ys[ys_xs], xs[ys_xs]
    kept = np.zeros_like(new)
    kept[ys[:room], xs[:room]] = True
    return kept


# shapes: each draws its pixels, and can give its first `room` new pixels (step 3 of the docstring)


class _Stroke:
    """One brush stroke of DeepFill v2: a polyline drawn with a round brush (PIL line of `width`
    plus a disc at every vertex, as the reference draws it)."""

    def __init__(self, size: int, rng: np.random.Generator):
        scale = size / REFERENCE_SIZE
        # the reference: average_radius = sqrt(H^2 + W^2) / 8, r ~ N(average_radius, average_radius // 2)
        # clipped to [0, 2 average_radius]; angles alternate around 2 pi / 5 and 2 pi - that (zig-zag)
        radius = math.sqrt(2 * size * size) / 8
        count = int(rng.integers(VERTICES[0], VERTICES[1] + 1))
        angle_min = MEAN_ANGLE - rng.uniform(0, ANGLE_RANGE)
        angle_max = MEAN_ANGLE + rng.uniform(0, ANGLE_RANGE)
        vertices = [(int(rng.integers(0, size)), int(rng.integers(0, size)))]
        for index in range(count):
            angle = rng.uniform(angle_min, angle_max)
            angle = 2 * math.pi - angle if index % 2 == 0 else angle
            length = _clip(rng.normal(radius, radius // 2), 0, 2 * radius)
            x = _clip(vertices[-1][0] + length * math.cos(angle), 0, size)
            y = _clip(vertices[-1][1] + length * math.sin(angle), 0, size)
            vertices.append((int(x), int(y)))
        low = max(BRUSH_WIDTH[0] * scale, MIN_BRUSH_WIDTH)
        high = max(BRUSH_WIDTH[1] * scale, low + 1)
        self.size, self.vertices, self.width = size, vertices, int(rng.uniform(low, high))

    def _draw(self, vertices: list[tuple[int, int]]) -> np.ndarray:
        canvas = Image.new("L", (self.size, self.size), 0)
        draw = ImageDraw.Draw(canvas)
        draw.line(vertices, fill=255, width=self.width)
        half = self.width // 2
        for x, y in vertices:
            draw.ellipse((x - half, y - half, x + half, y + half), fill=255)
        return np.asarray(canvas) > 0

    def pixels(self) -> np.ndarray:
        return self._draw(self.vertices)

    def first(self, mask: np.ndarray, room: int) -> np.ndarray:
        """The stroke cut short: its segments in drawing order until `room` new pixels are used,
        the last segment's pixels nearest to its start first."""
        added = np.zeros_like(mask)
        for start, end in zip(self.vertices, self.vertices[1:]):
            new = self._draw([start, end]) & ~mask & ~added
            count = int(np.count_nonzero(new))
            if count >= room:
                return added | _first(new, room, origin=start)
            added |= new
            room -= count
        return added  # segment by segment drew fewer new pixels than the whole stroke: _fill grows the rest


class _Box:
    """One of LaMa's rectangles, sides and margin scaled to the resolution."""

    def __init__(self, size: int, rng: np.random.Generator):
        scale = size / REFERENCE_SIZE
        margin = round(BOX_MARGIN * scale)
        low = max(round(BOX_SIDE[0] * scale), 2)
        high = max(min(round(BOX_SIDE[1] * scale), size - 2 * margin), low + 1)
        width, height = (int(rng.integers(low, high)) for _ in range(2))  # LaMa: randint(min, max)
        left = int(rng.integers(margin, max(size - margin - width, margin) + 1))
        top = int(rng.integers(margin, max(size - margin - height, margin) + 1))
        self.size, self.box = size, (top, left, height, width)

    def pixels(self) -> np.ndarray:
        top, left, height, width = self.box
        pixels = np.zeros((self.size, self.size), dtype=bool)
        pixels[top : top + height, left : left + width] = True
        return pixels

    def first(self, mask: np.ndarray, room: int) -> np.ndarray:
        """The box cut short: its new pixels in row order (a shorter box, the last row partial)."""
        return _first(self.pixels() & ~mask, room)


def _fill(
    size: int, rng: np.random.Generator, shape: Callable[[int, np.random.Generator], Any], base: Sequence[int],
    counts: Optional[Counts],
) -> np.ndarray:
    """bool (size, size): shapes drawn until the hole count lies in `counts` (the steps of the
    module docstring); `counts` None: the reference's `base` number of shapes, no limits."""
    mask = np.zeros((size, size), dtype=bool)
    holes = 0
    planned = int(rng.integers(base[0], base[1] + 1))
    for drawn in range(1, MAX_SHAPES + 1):
        item = shape(size, rng)
        new = item.pixels() & ~mask
        added = int(np.count_nonzero(new))
        if counts is not None and holes + added > counts[1]:
            mask |= item.first(mask, counts[1] - holes)
            holes = int(np.count_nonzero(mask))  # counts[1], unless a cut stroke drew fewer pixels
            break
        mask |= new
        holes += added
        if drawn >= planned and (counts is None or holes >= counts[0]):
            return mask
    if counts is not None and holes < counts[0]:
        _grow(mask, counts[0] - holes, rng)
    return mask


def _flip(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left-right and top-bottom flips, probability 1/2 each: what the reference intends (its
    `mask.transpose(...)` results are discarded, so its strokes always zig-zag rightwards)."""
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.5:
        mask = mask[::-1]
    return np.ascontiguousarray(mask)


def _counts(mask_ratio: Optional[Ratio], size: int) -> Optional[Counts]:
    if mask_ratio is None:
        return None
    low, high = check_mask_ratio(mask_ratio, key="mask_ratio")
    return hole_counts(low, high, size * size)


def _free_form(size: int, rng: np.random.Generator, counts: Optional[Counts]) -> np.ndarray:
    return _flip(_fill(size, rng, _Stroke, STROKES, counts), rng)


def _box(size: int, rng: np.random.Generator, counts: Optional[Counts]) -> np.ndarray:
    return _fill(size, rng, _Box, BOXES, counts)


def _generated(kind: str, size: int, rng: np.random.Generator, counts: Optional[Counts]) -> np.ndarray:
    if kind == "mix":  # one draw whatever it picks, so the rest of the sequence is the kind's own
        kind = "free_form" if rng.random() < 0.5 else "box"
    return _free_form(size, rng, counts) if kind == "free_form" else _box(size, rng, counts)


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise GanrunError(f"a mask size must be a whole number of pixels >= 4, got {size!r}")
    return size


# the generators


def free_form_mask(size: int, rng: np.random.Generator, *, mask_ratio: Optional[Ratio] = None) -> np.ndarray:
    """DeepFill v2's free-form brush strokes as bool (size, size), True = hole.

    `mask_ratio` (low, high): the hole fraction lies in [low, high] (module docstring: how);
    None: the reference's 1-3 strokes, whatever fraction they cover. Deterministic for a given
    state of `rng`. Raises GanrunError for a bad `size` or `mask_ratio`.
    """
    return _free_form(_check_size(size), rng, _counts(mask_ratio, size))


def box_mask(size: int, rng: np.random.Generator, *, mask_ratio: Optional[Ratio] = None) -> np.ndarray:
    """LaMa's random rectangles (1-3) as bool (size, size), True = hole; `mask_ratio` as in
    `free_form_mask`."""
    return _box(_check_size(size), rng, _counts(mask_ratio, size))


@dataclass(frozen=True)
class _FolderMask:
    bits: np.ndarray  # np.packbits of the bool mask at the file's own size
    shape: tuple[int, int]  # (H, W)

    def at(self, size: int) -> np.ndarray:
        """bool (size, size): nearest-neighbour resize (pixel centres, as PIL's NEAREST)."""
        mask = np.unpackbits(self.bits, count=self.shape[0] * self.shape[1]).reshape(self.shape).astype(bool)
        rows = np.minimum(((np.arange(size) + 0.5) * self.shape[0] / size).astype(np.int64), self.shape[0] - 1)
        columns = np.minimum(((np.arange(size) + 0.5) * self.shape[1] / size).astype(np.int64), self.shape[1] - 1)
        return mask[rows[:, None], columns[None, :]]


def _read_folder_mask(path: Path) -> Optional[tuple[np.ndarray, bool]]:
    """(bool (H, W) holes, the file was binary) or None when unreadable. Transparency in a mask
    file counts as black (not a hole): white strokes painted on a transparent layer."""
    try:
        levels = np.asarray(open_rgb_or_gray(path, channels=1, alpha_background="black").image)
    except UNREADABLE:
        return None
    return levels >= HOLE_LEVEL, bool(np.isin(levels, (0, 255)).all())


def _mask_folder(mask_dir: Optional[PathLike], key: str) -> list[Path]:
    """The mask files of a folder (searched recursively). Raises GanrunError when `mask_dir` is
    unset, missing, not a folder or holds no images."""
    if mask_dir is None or str(mask_dir) == "":
        raise GanrunError(f"{key} is not set; point it at a folder of mask images (white = hole)")
    folder = Path(mask_dir).expanduser()
    if not folder.is_dir():
        raise GanrunError(f"{key}={str(mask_dir)!r} is not a folder; point it at a folder of mask images (white = hole)")
    files = list_images(folder)
    if not files:
        raise GanrunError(f"{key}={str(mask_dir)!r} holds no images (.png, .jpg, ...); add masks (white = hole) or fix the path")
    return files


class MaskSource:
    """The masks of training: `masks_for(indices, epoch, size=, seed=)` -> float (N, 1, size, size),
    1 = hole, each image's mask a function of (seed, index, epoch) alone.

    `kind`: free_form | box | mix | folder (module docstring). `mask_ratio` (low, high): the hole
    fraction of every generated mask (not of folder masks, used as they are); the default
    [0.1, 0.5] is issue 13's example (mmagic's irregular masks default to (0.15, 0.5),
    `get_irregular_mask`). `mask_dir`: the
    folder of kind "folder"; its masks are read once here: unreadable files skipped (one warning),
    non-binary ones thresholded at 128 (one warning for the folder), masks with no hole skipped
    (one warning). Raises a one-line GanrunError for a bad kind or mask_ratio, a missing or empty
    folder, or a folder with no usable mask.
    """

    def __init__(self, *, kind: str = "free_form", mask_ratio: Any = (0.1, 0.5), mask_dir: Optional[PathLike] = None):
        self.kind = check_kind(kind)
        self.mask_ratio = check_mask_ratio(mask_ratio)
        self.mask_dir = None if mask_dir is None or str(mask_dir) == "" else Path(mask_dir).expanduser()
        self._folder: list[_FolderMask] = []
        if kind == "folder":
            self._folder = self._load_folder(mask_dir)

    def _load_folder(self, mask_dir: Optional[PathLike]) -> list[_FolderMask]:
        files = _mask_folder(mask_dir, "dataset.mask_dir")
        with ThreadPoolExecutor(min(8, len(files))) as pool:  # PIL releases the GIL while decoding
            read = list(pool.map(_read_folder_mask, files))
        bad = [path for path, result in zip(files, read) if result is None]
        report_unreadable(bad, len(files), items="masks")
        graded = [path for path, result in zip(files, read) if result is not None and not result[1]]
        if graded:
            warn(f"{len(graded)} of {len(files)} masks in {mask_dir} are not binary (e.g. {graded[0]}): "
                 f"thresholded at {HOLE_LEVEL} (white = hole)")
        empty = [path for path, result in zip(files, read) if result is not None and not result[0].any()]
        if empty:
            warn(f"skipped {len(empty)} of {len(files)} masks in {mask_dir} that mark no hole "
                 f"(no pixel >= {HOLE_LEVEL}; white = hole), e.g. {empty[0]}")
        masks = [_FolderMask(np.packbits(holes), holes.shape) for holes, _ in (r for r in read if r is not None)
                 if holes.any()]
        if not masks:
            raise GanrunError(f"dataset.mask_dir={str(mask_dir)!r} has no usable mask (unreadable, or no white pixel)")
        return masks

    def __len__(self) -> int:
        """How many user masks a folder source holds (0 for generated kinds)."""
        return len(self._folder)

    def describe(self) -> str:
        """One line for logs and stored results: the kind, its source and the hole fraction."""
        low, high = self.mask_ratio
        if self.kind == "folder":
            return (f"folder masks: {len(self._folder)} from {self.mask_dir}, resized (nearest), flipped and rotated "
                    f"by 90 degrees at random, hole fraction as drawn (mask_ratio not applied)")
        what = {"free_form": "free-form brush strokes (DeepFill v2)", "box": "rectangles (LaMa)",
                "mix": "free-form strokes or rectangles, 1/2 each"}[self.kind]
        return f"{self.kind} masks: {what}, hole fraction in [{low:g}, {high:g}] (generator v{GENERATOR_VERSION})"

    def mask(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """One mask, bool (size, size), True = hole, drawn from `rng`."""
        if self.kind != "folder":
            return _generated(self.kind, size, rng, hole_counts(*self.mask_ratio, size * size))
        mask = self._folder[int(rng.integers(len(self._folder)))].at(size)
        mask = np.rot90(mask, int(rng.integers(4)))
        return np.ascontiguousarray(mask[:, ::-1] if rng.random() < 0.5 else mask)

    def masks_for(self, indices: Union[Sequence[int], torch.Tensor], epoch: int, *, size: int, seed: int) -> torch.Tensor:
        """float (N, 1, size, size) in {0, 1}, 1 = hole: the masks of images `indices` (dataset
        indices) in `epoch`, each from `default_rng([seed, index, epoch])`. CPU; a few hundred
        microseconds per 64 px mask."""
        _check_size(size)
        indices = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        masks = np.stack([self.mask(np.random.default_rng([seed, int(index), epoch]), size) for index in indices])
        return torch.from_numpy(masks).unsqueeze(1).float()


# the fixed evaluation set


class EvaluationMasks(Mapping[str, torch.Tensor]):
    """The fixed masks of evaluation, a mapping bucket name ('0-10%', ...) -> float (count, 1, size,
    size) in {0, 1}, 1 = hole, every mask's hole fraction in its bucket (low, high]. Built by
    `evaluation_masks`; `describe()` is the protocol line an evaluation stores with its numbers;
    `save(folder)` / `EvaluationMasks.load(folder)` keep the set as PNGs (white = hole)."""

    def __init__(self, masks: dict[str, torch.Tensor], *, kind: str, size: int, seed: int, count_per_bucket: int,
                 version: int = GENERATOR_VERSION):
        self.masks, self.kind, self.size, self.seed = masks, kind, size, seed
        self.count_per_bucket, self.version = count_per_bucket, version

    def __getitem__(self, bucket: str) -> torch.Tensor:
        return self.masks[bucket]

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def protocol(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "seed": self.seed, "count_per_bucket": self.count_per_bucket,
                "buckets": [list(bucket) for bucket in BUCKETS], "generator_version": self.version}

    def describe(self) -> str:
        buckets = ", ".join(bucket_name(*bucket) for bucket in BUCKETS)
        return (f"evaluation masks: {self.kind} (ganrun mask generator v{self.version}), {self.size}x{self.size} px, "
                f"seed {self.seed}, {self.count_per_bucket} per hole-size bucket ({buckets}; each (low, high] "
                f"of the pixels, as partial conv and LaMa report), 1 = hole")

    def save(self, folder: PathLike) -> Path:
        """FOLDER/protocol.json and FOLDER/<low>-<high>/<i>.png (uint8, 255 = hole)."""
        folder = Path(folder)
        for name, masks in self.masks.items():
            bucket_dir = folder / name.rstrip("%")
            bucket_dir.mkdir(parents=True, exist_ok=True)
            for index, mask in enumerate(masks):
                Image.fromarray(mask[0].numpy().astype(np.uint8) * 255).save(bucket_dir / f"{index:04d}.png")
        (folder / "protocol.json").write_text(json.dumps(self.protocol(), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: PathLike) -> "EvaluationMasks":
        """The set `save` wrote. Raises GanrunError when the folder is not one."""
        folder = Path(folder)
        try:
            protocol = json.loads((folder / "protocol.json").read_text())
            masks = {}
            for bucket in protocol["buckets"]:
                name = bucket_name(*bucket)
                files = sorted((folder / name.rstrip("%")).glob("*.png"))
                masks[name] = torch.from_numpy(np.stack([_png_holes(p) for p in files])).unsqueeze(1).float()
            return cls(masks, kind=protocol["kind"], size=protocol["size"], seed=protocol["seed"],
                       count_per_bucket=protocol["count_per_bucket"], version=protocol["generator_version"])
        except (*UNREADABLE, KeyError, TypeError, json.JSONDecodeError) as error:
            raise GanrunError(f"{folder} is not a saved evaluation mask set ({type(error).__name__}: {error})") from None


def _png_holes(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) >= HOLE_LEVEL


def evaluation_masks(count_per_bucket: int, *, size: int, seed: int = 0, kind: str = "free_form") -> EvaluationMasks:
    """`count_per_bucket` masks of `kind` (free_form, box or mix) per hole-size bucket of
    `BUCKETS`, float (count, 1, size, size), the fraction of each in (low, high]. The same set
    for the same arguments on every call and machine (mask i of bucket b from
    `default_rng([seed, EVALUATION_STREAM, b, i])`), so results compare across checkpoints."""
    check_kind(kind, key="evaluation mask kind", kinds=GENERATED_KINDS)
    _check_size(size)
    if isinstance(count_per_bucket, bool) or not isinstance(count_per_bucket, int) or count_per_bucket < 1:
        raise GanrunError(f"evaluation masks per bucket must be a whole number >= 1, got {count_per_bucket!r}")
    masks = {}
    for number, (low, high) in enumerate(BUCKETS):
        counts = hole_counts(low, high, size * size, exclusive_low=True)
        drawn = [_generated(kind, size, np.random.default_rng([seed, EVALUATION_STREAM, number, index]), counts)
                 for index in range(count_per_bucket)]
        masks[bucket_name(low, high)] = torch.from_numpy(np.stack(drawn)).unsqueeze(1).float()
    return EvaluationMasks(masks, kind=kind, size=size, seed=seed, count_per_bucket=count_per_bucket)


# a user's holes, for `ganrun sample`


class WarnOnce:
    """Warnings said once per run (one `ganrun sample`): the topics already said."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def __call__(self, topic: str, message: str) -> None:
        if topic not in self.said:
            self.said.add(topic)
            warn(message)


def _alpha_holes(path: PathLike, channels: int) -> tuple[torch.Tensor, Optional[torch.Tensor], bool]:
    """(uint8 (channels, H, W) colour, bool (1, H, W) alpha < 128 or None, the file has
    transparency). Raises one of UNREADABLE."""
    decoded = open_rgb_or_gray(Path(path), channels=channels, alpha_background=None)
    pixels = np.asarray(decoded.image)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    colour = torch.from_numpy(np.ascontiguousarray(pixels[..., :channels].transpose(2, 0, 1)))
    if not decoded.transparent:  # no alpha, or one the same at every pixel (decode.py: not a mask)
        return colour, None, False
    holes = pixels[..., channels] < HOLE_LEVEL
    return colour, (torch.from_numpy(holes)[None] if holes.any() else None), True


def holes_from_alpha(path: PathLike, *, channels: int = 3) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """An image whose holes are transparent pixels -> (uint8 (channels, H, W) colour as stored,
    bool (1, H, W) True where alpha < 128, or None when no pixel is). The colour is upright
    (EXIF) and 8-bit by ganrun's decoder (ganrun/data/decode.py); an alpha that is the same at
    every pixel is not a mask (None). Raises one of `ganrun.data.decode.UNREADABLE`."""
    colour, holes, _ = _alpha_holes(path, channels)
    return colour, holes


def read_mask(path: PathLike, *, size_hw: tuple[int, int], once: Optional[WarnOnce] = None) -> Optional[torch.Tensor]:
    """A mask file (white >= 128 = fill) for an image of `size_hw` (H, W) -> bool (1, H, W), or
    None when it marks nothing (the caller reports that file).

    Policies: a mask of another size is resized to the image's with nearest neighbour and a
    warning naming both sizes, for that file (editors often export masks from a scaled copy;
    a mask of another aspect ratio is probably the wrong file, and the warning says so);
    a mask that is not binary (anti-aliased brushes, JPEG) is thresholded at 128 and said once
    per `once` (every time when `once` is None). Transparent pixels count as black (no hole).
    Raises one of `ganrun.data.decode.UNREADABLE` for a file that cannot be read.
    """
    path = Path(path)
    levels = np.asarray(open_rgb_or_gray(path, channels=1, alpha_background="black").image)
    height, width = size_hw
    if levels.shape != (height, width):
        other = abs(levels.shape[1] / levels.shape[0] - width / height) > 0.01 * width / height
        warn(f"mask {path} is {levels.shape[1]}x{levels.shape[0]}, its image {width}x{height}: resized with nearest "
             f"neighbour" + ("; the aspect ratios differ, check that it is this image's mask" if other else ""))
        levels = np.asarray(Image.fromarray(levels).resize((width, height), Image.Resampling.NEAREST))
    if not np.isin(levels, (0, 255)).all():
        (once or WarnOnce())("non-binary masks", f"mask {path} is not binary (gray levels): thresholded at {HOLE_LEVEL}, "
                                                 "white = fill (said once; other such masks are treated the same)")
    holes = levels >= HOLE_LEVEL
    return torch.from_numpy(holes)[None] if holes.any() else None


@dataclass(frozen=True)
class Holes:
    """What `UserHoles.read` found for one image. `problem` is None when `mask` holds holes; else
    one line for the caller to report for this file (and skip it, not crash)."""

    path: Path
    image: Optional[torch.Tensor]  # uint8 (C, H, W) colour; None when the file could not be read
    mask: Optional[torch.Tensor]  # bool (1, H, W), True = fill
    source: Optional[str]  # where the holes came from: "alpha", "mask file PATH", "mask file PATH + alpha"
    problem: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class UserHoles:
    """The holes of a user's images for `ganrun sample`: a mask in `mask_dir` with the image's
    file stem (any image extension, white = fill), else the image's transparent pixels
    (alpha < 128). Both: their union (a transparent pixel has no colour to keep).

    Raises a one-line GanrunError when `mask_dir` is given but missing or empty. Per-file
    problems (unreadable, a mask that marks nothing, an image without alpha and without a mask)
    come back in `Holes.problem`; non-binary masks are said once per UserHoles.
    """

    def __init__(self, *, mask_dir: Optional[PathLike] = None, channels: int = 3, key: str = "mask_dir"):
        self.mask_dir, self.channels, self.once = mask_dir, channels, WarnOnce()
        self.by_stem: dict[str, Path] = {}
        if mask_dir is not None and str(mask_dir) != "":
            for path in _mask_folder(mask_dir, key):
                if path.stem in self.by_stem:
                    self.once(f"stem {path.stem}", f"{mask_dir} holds two masks named {path.stem}: "
                                                   f"{self.by_stem[path.stem]} is used, {path} ignored")
                    continue
                self.by_stem[path.stem] = path

    def read(self, path: PathLike) -> Holes:
        path = Path(path)
        try:
            image, alpha, transparent = _alpha_holes(path, self.channels)
        except UNREADABLE as error:
            return Holes(path, None, None, None, f"{path} could not be read ({type(error).__name__})")
        mask_path = self.by_stem.get(path.stem)
        if mask_path is None:
            if alpha is not None:
                return Holes(path, image, alpha, "alpha")
            why = "its transparent pixels are all >= 128 alpha" if transparent else "it has no transparent pixels"
            where = f"no mask named {path.stem}.* in {self.mask_dir} and " if self.by_stem else ""
            return Holes(path, image, None, None, f"{path} has no holes to fill: {where}{why} "
                                                  f"(mark holes as transparency, or give mask_dir= with a white-on-black mask)")
        try:
            mask = read_mask(mask_path, size_hw=tuple(image.shape[1:]), once=self.once)
        except UNREADABLE as error:
            return Holes(path, image, None, None, f"mask {mask_path} of {path} could not be read ({type(error).__name__})")
        if alpha is not None and mask is None:
            return Holes(path, image, alpha, f"alpha (mask file {mask_path} marks nothing)")
        if alpha is not None:
            return Holes(path, image, mask | alpha, f"mask file {mask_path} + alpha")
        if mask is None:
            return Holes(path, image, None, None, f"mask {mask_path} of {path} marks nothing "
                                                  f"(no pixel >= {HOLE_LEVEL}; white = fill)")
        return Holes(path, image, mask, f"mask file {mask_path}")
