"""Inpainting data (`task=inpainting`): any dataset of single images, each training batch paired
with holes made on the fly, and a held-out split that is never trained on.

`masked_data` wraps what the dataset's loader returned (`dataset=celeba`, `image_folder`, ...)
from the `dataset.*` keys the inpainting task owns (conf/masks/default.yaml):
- `masks` (free_form | box | mix | folder), `mask_ratio` [low, high], `mask_dir` (kind folder):
  the training holes, `ganrun.data.masks.MaskSource` (its docstring: shapes, sources, ratio);
- `holdout`: the last `holdout` images in the loader's order (file order for folders) are held
  out for `ganrun eval`, in-training evaluation and the sample grids. Training draws only from
  the others: the loader's data is sliced before the batch stream is built, so no epoch order
  can reach a held-out index.

Batches: {"image": float (N, C, S, S) in [-1, 1], "mask": float (N, 1, S, S), exactly 0.0 or 1.0,
1 = hole} (InpaintRecipe's batch). The images come from the ordinary resumable stream
(`ganrun.data.images.Batches`) over the training slice; the masks are a function of (trainer.seed,
image index, epoch) alone (`MaskSource.masks_for`), drawn for exactly the indices and epoch that
stream serves. The stream's whole state is therefore its (epoch, position), and a resumed run
draws bit for bit the images and masks of an uninterrupted one.

Grids and held-out masks never depend on the run's seed: grid masks come from
`default_rng([GRID_STREAM, 0, 0, i, 1])` (5 words, apart from the training [seed, index, epoch]
and the evaluation [seed, 7, bucket, i] sequences), so every run on the same data shows the same
rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from ganrun.data.decode import UNREADABLE
from ganrun.data.images import Batches, ImageData, decode_image, report_unreadable
from ganrun.data.masks import MaskSource
from ganrun.errors import GanrunError

DEFAULT_HOLDOUT = 200  # conf/masks/default.yaml; dataset=paired holds out the same count
GRID_STREAM = 8  # first word of a grid mask's seed (the evaluation sets use 7 as their second word)

# helpers


def _check_holdout(holdout: Any, count: int, source: str) -> int:
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise GanrunError(f"dataset.holdout must be a whole number >= 0 (0: no held-out split), got {holdout!r}")
    if holdout >= count:
        raise GanrunError(
            f"dataset.holdout={holdout} leaves no training images of the {count:,} in {source}; "
            f"lower it, e.g. dataset.holdout={max(0, min(DEFAULT_HOLDOUT, count // 10))}"
        )
    return holdout


def _slice(data: ImageData, start: int, stop: int) -> ImageData:
    """The images [start, stop) of `data` as an ImageData of their own (in memory or streamed)."""
    if data.images is not None:
        labels = data.labels[start:stop] if data.labels is not None else None
        return dataclasses.replace(data, images=data.images[start:stop], labels=labels, files=None)
    return dataclasses.replace(data, images=None, labels=None, files=list(data.files[start:stop]))


def grid_mask_generator(index: int) -> np.random.Generator:
    """The generator of fixed grid mask `index`: the same for every run on every machine."""
    return np.random.default_rng([GRID_STREAM, 0, 0, index, 1])


# classes


@dataclass(frozen=True)
class HeldOut:
    """The held-out images of inpainting data, uint8 (M, C, S, S), never trained on; `names`
    says which (file stems for streamed folders, else the index in the loader's order)."""

    images: torch.Tensor
    names: list[str]
    source: str  # one line: which images, how many


@dataclass
class MaskedData(ImageData):
    """Images with holes made on the fly (module docstring). `train` / `held` are the loader's
    data split by `holdout`; `images` / `files` of this object are the training slice's, so code
    that reads them sees what is trained on. Build it with `masked_data`."""

    kind: ClassVar[str] = "masked"
    train: Optional[ImageData] = None
    held: Optional[ImageData] = None  # None when holdout = 0
    mask_source: Optional[MaskSource] = None
    holdout: int = 0

    def __len__(self) -> int:
        return len(self.train)

    def batches(self, **settings) -> "MaskedBatches":
        return MaskedBatches(data=self, **settings)

    def first_images(self, count: int) -> torch.Tensor:
        """The first `count` held-out images (training images when there is no split), float
        (n, C, S, S) in [-1, 1]: the run's real.png and the originals of the grid rows."""
        return (self.held if self.held is not None else self.train).first_images(count)

    def grid_masks(self, count: int) -> torch.Tensor:
        """`count` fixed masks of the training kind and hole fraction, float (count, 1, S, S) in
        {0, 1}, 1 = hole: mask i from `grid_mask_generator(i)`, the same for every run."""
        masks = [self.mask_source.mask(grid_mask_generator(index), self.resolution) for index in range(count)]
        return torch.from_numpy(np.stack(masks)).unsqueeze(1).float()

    def grid_examples(self, count: int) -> dict[str, torch.Tensor]:
        """{"real": the first `count` held-out images (float, [-1, 1]), "mask": `grid_masks`}: the
        keyword arguments of InpaintRecipe.grid_inputs, which keeps one row per 4 grid images."""
        real = self.first_images(count)
        return {"real": real, "mask": self.grid_masks(len(real))}

    def test_split(self) -> HeldOut:
        """The held-out images, all of them, in order. Raises GanrunError when there are none
        (dataset.holdout=0) or none can be read."""
        return held_out_images(self.held, start=len(self.train), holdout=self.holdout, source=self.train.source)


def split_off(data: ImageData, holdout: Any) -> tuple[ImageData, Optional[ImageData]]:
    """(training slice, held-out slice or None) of the loader's `data`: the last `holdout` images
    held out. Raises GanrunError for a bad `holdout` or one that leaves no training image."""
    count = len(data)
    holdout = _check_holdout(holdout, count, data.source)
    return _slice(data, 0, count - holdout), (_slice(data, count - holdout, count) if holdout else None)


def held_out_images(held: Optional[ImageData], *, start: int, holdout: int, source: str) -> HeldOut:
    """The images of the held-out slice `held` (from `split_off`; they follow `start` training
    images) as uint8 (M, C, S, S). Raises GanrunError when there is none or none can be read."""
    if held is None:
        raise GanrunError(
            "the inpainting data has no held-out split (dataset.holdout=0); train with dataset.holdout=N "
            f"(e.g. {DEFAULT_HOLDOUT}) to measure on images the model never saw"
        )
    if held.images is not None:
        images, names = held.images, [str(start + index) for index in range(len(held.images))]
    else:  # streamed: unreadable files are skipped (one warning), so names follow the files that were read
        good, bad = [], []
        for path in held.files:
            try:
                good.append((path, decode_image(path, resolution=held.resolution, channels=held.channels,
                                                alpha_background=held.alpha_background)))
            except UNREADABLE:
                bad.append(path)
        report_unreadable(bad, len(held.files))
        if not good:
            raise GanrunError(f"none of the {len(bad)} held-out images of {source} could be read")
        images, names = torch.stack([image for _, image in good]), [path.stem for path, _ in good]
    return HeldOut(images=images.contiguous(), names=names,
                   source=f"the last {holdout:,} images of {source} (dataset.holdout), {len(images):,} read, "
                          f"{held.resolution}x{held.resolution}")


def masked_data(
    data: ImageData,
    *,
    masks: str = "free_form",
    mask_ratio: Any = (0.1, 0.5),
    mask_dir: Optional[str] = None,
    holdout: int = DEFAULT_HOLDOUT,
) -> MaskedData:
    """The loader's single-image `data` with training holes (`masks`, `mask_ratio`, `mask_dir`:
    `MaskSource`) and the last `holdout` images held out. Raises a one-line GanrunError for data
    that is not images (toy points, pairs), a bad mask setting (MaskSource), or a `holdout` that
    leaves no training image."""
    if data.kind != "single" or (data.images is not None and data.images.is_floating_point()) or data.resolution < 8:
        what = "2-D points" if data.images is not None and data.images.is_floating_point() else f"{data.kind} data"
        raise GanrunError(f"task=inpainting fills holes in images, and the dataset gives {what}; pick an image dataset "
                          "(dataset=celeba, dataset=image_folder dataset.root=DIR, ...)")
    source = MaskSource(kind=masks, mask_ratio=mask_ratio, mask_dir=mask_dir)
    train, held = split_off(data, holdout)
    split = f"{len(train):,} train / {holdout:,} held-out (the last in order, dataset.holdout)"
    return MaskedData(
        source=f"{data.source}; inpainting: {split}; {source.describe()}", images=train.images, labels=None,
        files=train.files, resolution=data.resolution, channels=data.channels, alpha_background=data.alpha_background,
        train=train, held=held, mask_source=source, holdout=holdout,
    )


class MaskedBatches:
    """Endless, resumable stream {"image": float (N, C, S, S) in [-1, 1], "mask": float (N, 1, S, S)
    in {0, 1}} on `device`: the training slice's `Batches` (same settings) plus the masks of the
    very indices and epoch it serves. State: that stream's (epoch, position)."""

    def __init__(self, *, data: MaskedData, seed: int, device: torch.device, **settings: Any):
        self.stream: Batches = data.train.batches(seed=seed, device=device, **settings)
        self.source, self.size, self.seed, self.device = data.mask_source, data.resolution, seed, device
        self._order: Optional[tuple[int, torch.Tensor]] = None  # (epoch, its index batches), as Batches caches

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def rebatch(self, *, old_batch_size: int, new_batch_size: int) -> None:
        """See Batches.rebatch: the masks follow the image stream's (epoch, position)."""
        self.stream.rebatch(old_batch_size=old_batch_size, new_batch_size=new_batch_size)
        self._order = None

    def __iter__(self) -> "MaskedBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        epoch, position = self.stream.peek()  # the batch the stream serves next
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.stream.batch_indices(epoch))
        indices = self._order[1][position]
        batch = next(self.stream)
        if (self.stream.epoch, self.stream.position) != (epoch, position + 1):  # Batches changed how it counts
            raise RuntimeError(f"the image stream served batch {(self.stream.epoch, self.stream.position)}, "
                               f"the masks were drawn for {(epoch, position + 1)}")
        masks = self.source.masks_for(indices, epoch, size=self.size, seed=self.seed)
        return {"image": batch["image"], "mask": masks.to(self.device, non_blocking=True)}
