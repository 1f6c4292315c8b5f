"""Super-resolution data: paired low/high-resolution images, aligned random crops, the bicubic
degradation, and tiled inference for images of any size (BasicSR's paired-image workflow).

Pairs are an HR folder plus either an LR folder (files matched by stem through `lr_name`, e.g.
`{stem}x4`: `baby.png` <-> `babyx4.png`) or none, in which case LR images are made by
antialiased bicubic downscaling of HR (torch's, deterministic), quantized to uint8 as a saved
LR file would be. Test sets that keep both sides in ONE folder (`img_001_HR.png`,
`img_001_LR.png`) are read with an HR template too: `hr_name='{stem}_HR'`, `lr_name='{stem}_LR'`
(the LR folder is then the HR folder unless `lr_dir` says otherwise). A folder that visibly holds
both sides while no `hr_name` says which is which is an error, not a silent mix. HR images are
cropped to a multiple of the scale at their bottom/right edge ("mod crop"). All pairs are
decoded once into memory (uint8), by the policy of ganrun/data/decode.py (upright, 8-bit,
transparency onto `alpha_background`); pairs whose files cannot be read are skipped and counted
in one warning.

Training batches: `{"image": HR crops, "lr": LR crops}` as float in [-1, 1]. Each crop picks an
image at random (with replacement), a random aligned window, flips and a 90 degree rotation,
all drawn from a generator seeded by (seed, rank, batch index), so the stream's whole state is
one integer and a resumed run sees exactly the crops the uninterrupted one would. Without an
LR folder, LR crops are made from the augmented HR crops (one batched resize).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ganrun.data.decode import UNREADABLE, AlphaBackground, background_level, open_rgb_or_gray
from ganrun.data.images import ImageData, list_images, report_transparent, report_unreadable
from ganrun.errors import GanrunError
from ganrun.imaging import bicubic_downscale, check_scale, mod_crop, to_float

# helpers


def read_image(path: Path, *, channels: int, alpha_background: AlphaBackground = "white") -> torch.Tensor:
    """uint8 (channels, H, W) at the file's own size, decoded by ganrun's one policy
    (ganrun/data/decode.py: upright, 8-bit, transparency onto `alpha_background`); grayscale files
    become RGB and back as asked. Raises GanrunError naming the file when it cannot be read."""
    try:
        return _decode(path, channels, alpha_background)[0]
    except UNREADABLE as error:
        raise GanrunError(f"{path} could not be read as an image ({error}); remove or replace it") from None


def _decode(path: Path, channels: int, alpha_background: AlphaBackground) -> tuple[torch.Tensor, bool]:
    """(uint8 (channels, H, W), whether the file had transparent pixels); raises one of UNREADABLE."""
    decoded = open_rgb_or_gray(path, channels=channels, alpha_background=alpha_background)
    return TF.pil_to_tensor(decoded.image), decoded.transparent


def _size(image: torch.Tensor) -> str:
    return f"{image.shape[-1]}x{image.shape[-2]}"


@dataclass
class Pair:
    """One HR image (mod-cropped) and its LR partner (None: made by bicubic downscaling)."""

    name: str  # the HR file's stem
    hr: torch.Tensor  # uint8 (C, H, W)
    lr: Optional[torch.Tensor] = None  # uint8 (C, H / scale, W / scale)
    hr_path: Optional[Path] = None

    def low_res(self, scale: int) -> torch.Tensor:
        return self.lr if self.lr is not None else bicubic_downscale(self.hr, scale)


# Names that mark a file as one side of a pair: "img_001_HR" / "img_001_LR", "babyx4" beside "baby".
_SIDE_SUFFIX = re.compile(r"^(?P<stem>.+?)(?P<suffix>[_\-. ]?(?P<side>hr|lr))$", re.IGNORECASE)
_SCALE_SUFFIX = re.compile(r"^(?P<stem>.+?)(?P<suffix>[_\-. ]?x[234])$", re.IGNORECASE)


def _name_pattern(template: str, key: str) -> re.Pattern:
    """'{stem}_HR' -> a regex whose group `stem` is the shared part of a file stem."""
    if template.count("{stem}") != 1:
        raise GanrunError(f"{key}={template!r} must contain {{stem}} once, e.g. {key}='{{stem}}_HR'")
    before, after = template.split("{stem}")
    return re.compile(f"^{re.escape(before)}(?P<stem>.+){re.escape(after)}$")


def _mixed_sides(stems: set[str], lr_name: str) -> Optional[tuple[str, str, str, str, int]]:
    """Evidence that one folder holds both sides of pairs: (an HR stem, its LR stem, a suggested
    hr_name, a suggested lr_name, how many such pairs), or None."""
    found: list[tuple[str, str, str, str]] = []
    by_side: dict[tuple[str, str], str] = {}
    for stem in stems:
        match = _SIDE_SUFFIX.match(stem)
        if match:
            by_side[(match["stem"], match["side"].lower())] = match["suffix"]
    for (base, side), suffix in sorted(by_side.items()):
        if side == "hr" and (base, "lr") in by_side:
            found.append((base + suffix, base + by_side[(base, "lr")], "{stem}" + suffix, "{stem}" + by_side[(base, "lr")]))
    if lr_name != "{stem}":  # the configured LR template names another file of this folder
        found += [(stem, lr_name.format(stem=stem), "{stem}", lr_name) for stem in sorted(stems)
                  if lr_name.format(stem=stem) in stems]
    for stem in sorted(stems):  # "babyx4" beside "baby": the DIV2K / BasicSR naming
        match = _SCALE_SUFFIX.match(stem)
        if match and match["stem"] in stems:
            found.append((match["stem"], stem, "{stem}", "{stem}" + match["suffix"]))
    if not found:
        return None
    hr_stem, lr_stem, hr_template, lr_template = found[0]
    return hr_stem, lr_stem, hr_template, lr_template, len({pair[:2] for pair in found})


def _hr_files_by_template(files: list[Path], *, hr_name: str, lr_name: str, one_folder: bool) -> list[tuple[str, Path]]:
    """(shared name, HR file) for the files whose stem matches `hr_name`. In a folder shared with
    LR files, an LR partner is never HR ('{stem}' beside '{stem}x4' matches "babyx4" too)."""
    pattern = _name_pattern(hr_name, "dataset.hr_name")
    hr_files = [(match["stem"], path) for path in files if (match := pattern.match(path.stem))]
    if not one_folder:
        return hr_files
    if _name_pattern(lr_name, "dataset.lr_name").pattern == pattern.pattern:
        raise GanrunError(
            f"dataset.hr_name and dataset.lr_name are both {hr_name!r}, but HR and LR share one folder; "
            "set them to the two names, e.g. dataset.hr_name='{stem}_HR' dataset.lr_name='{stem}_LR'"
        )
    partners = {lr_name.format(stem=key) for key, _ in hr_files}
    return [(key, path) for key, path in hr_files if path.stem not in partners]


def _read_or_none(path: Path, channels: int, alpha_background: AlphaBackground) -> Optional[tuple[torch.Tensor, bool]]:
    try:
        return _decode(path, channels, alpha_background)
    except UNREADABLE:
        return None


def load_pairs(
    *,
    hr_dir: str,
    lr_dir: Optional[str],
    lr_name: str,
    scale: int,
    channels: int,
    hr_name: Optional[str] = None,
    alpha_background: AlphaBackground = "white",
) -> list[Pair]:
    """Every HR image of `hr_dir` with its LR partner (matched by `lr_name`), in file order.

    hr_name=None: every image of `hr_dir` is HR; LR files come from `lr_dir` (None: made by
    bicubic downscaling). hr_name='{stem}_HR': only files named so are HR, `{stem}` is the name
    both sides share, and LR files come from `lr_dir`, or from `hr_dir` itself when lr_dir=None
    (input and target in one folder). Pairs whose files cannot be read are skipped and counted
    in one warning. Raises GanrunError for a missing folder or partner, an LR image of the wrong
    size, and a folder that holds both sides of pairs while hr_name is None.
    """
    hr_folder = Path(hr_dir).expanduser()
    if not hr_folder.is_dir():
        raise GanrunError(f"dataset.hr_dir={hr_dir!r} is not a folder; point it at the high-resolution images")
    files = list_images(hr_folder)
    if not files:
        raise GanrunError(f"dataset.hr_dir={hr_dir!r} holds no images")
    if "{stem}" not in lr_name:
        raise GanrunError(f"dataset.lr_name={lr_name!r} must contain {{stem}}, e.g. dataset.lr_name='{{stem}}x{scale}'")
    background_level(alpha_background)
    one_folder = hr_name is not None and (lr_dir is None or Path(lr_dir).expanduser().resolve() == hr_folder.resolve())
    if one_folder:
        lr_dir = hr_dir
    if hr_name is None:
        mixed = _mixed_sides({path.stem for path in files}, lr_name)
        if mixed is not None:
            hr_stem, lr_stem, hr_template, lr_template, count = mixed
            raise GanrunError(
                f"dataset.hr_dir={hr_dir!r} holds both sides of {count} pair{'s' if count > 1 else ''} (e.g. {hr_stem} and "
                f"{lr_stem}) but no template says which is which; set dataset.hr_name='{hr_template}' "
                f"dataset.lr_name='{lr_template}' (lr_dir=null then reads LR from the same folder)"
            )
        hr_files = [(path.stem, path) for path in files]  # (the name both sides share, the HR file)
    else:
        hr_files = _hr_files_by_template(files, hr_name=hr_name, lr_name=lr_name, one_folder=one_folder)
        if not hr_files:
            raise GanrunError(f"dataset.hr_dir={hr_dir!r} holds no images named like dataset.hr_name={hr_name!r}")
    lr_files: dict[str, Path] = {}
    if lr_dir is not None:
        lr_folder = Path(lr_dir).expanduser()
        if not lr_folder.is_dir():
            raise GanrunError(f"dataset.lr_dir={lr_dir!r} is not a folder; point it at the low-resolution images or set it to null")
        lr_files = {path.stem: path for path in (files if one_folder else list_images(lr_folder))}
        missing = [(key, path) for key, path in hr_files if lr_name.format(stem=key) not in lr_files]
        if missing:
            key, path = missing[0]
            raise GanrunError(
                f"{path} has no low-resolution partner {lr_name.format(stem=key)}.* in {lr_dir} "
                f"({len(missing)} of {len(hr_files)} HR images unmatched); check dataset.lr_name (now {lr_name!r})"
            )

    def load(entry: tuple[str, Path]) -> tuple[Optional[Pair], list[Path], list[Path]]:
        """(the pair or None, its unreadable files, its files with transparent pixels)."""
        key, hr_path = entry
        lr_path = lr_files[lr_name.format(stem=key)] if lr_dir is not None else None
        read = {path: _read_or_none(path, channels, alpha_background) for path in (hr_path, lr_path) if path}
        unreadable = [path for path, result in read.items() if result is None]
        transparent = [path for path, result in read.items() if result is not None and result[1]]
        if unreadable:
            return None, unreadable, []
        hr = read[hr_path][0]
        if lr_path is None:
            hr = mod_crop(hr, scale)
            if hr.shape[-1] < scale or hr.shape[-2] < scale:
                raise GanrunError(f"{hr_path} is {_size(hr)}, smaller than dataset.scale={scale}")
            return Pair(name=key, hr=hr, hr_path=hr_path), [], transparent
        lr = read[lr_path][0]
        expected = (hr.shape[-2] // scale, hr.shape[-1] // scale)
        if tuple(lr.shape[-2:]) != expected:
            raise GanrunError(
                f"{lr_path} is {_size(lr)}, but its HR partner {hr_path} is {_size(hr)}: at dataset.scale={scale} "
                f"the LR image must be {expected[1]}x{expected[0]}; check dataset.scale and dataset.lr_dir"
            )
        return Pair(name=key, hr=mod_crop(hr, scale), lr=lr, hr_path=hr_path), [], transparent

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        loaded = list(pool.map(load, hr_files))
    pairs = [pair for pair, _, _ in loaded if pair is not None]
    report_unreadable([path for _, bad, _ in loaded for path in bad], len(loaded), items="pairs")
    if not pairs:
        raise GanrunError(f"none of the {len(loaded)} pairs under {hr_dir} could be read")
    transparent = [path for _, _, paths in loaded for path in paths]
    report_transparent(transparent, len(pairs) * (2 if lr_dir is not None else 1), alpha_background)
    return pairs


def augment(image: torch.Tensor, *, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    """Flips and a transpose: with both flips, the 8 symmetries of the square (all 90 degree rotations)."""
    if hflip:
        image = image.flip(-1)
    if vflip:
        image = image.flip(-2)
    if transpose:
        image = image.transpose(-1, -2)
    return image


# classes


@dataclass
class PairedSRData(ImageData):
    """`ImageData` for super-resolution: training pairs, optional validation pairs, and its own
    batch stream (`batches`), grid crops (`first_images`) and in-training evaluator."""

    kind: ClassVar[str] = "paired_sr"
    pairs: list[Pair] = field(default_factory=list)
    validation: list[Pair] = field(default_factory=list)
    scale: int = 4
    hr_patch: int = 96
    augment: bool = True

    def __len__(self) -> int:
        return len(self.pairs)

    def batches(self, **settings) -> "PairedBatches":
        return PairedBatches(data=self, **settings)

    def first_images(self, count: int) -> torch.Tensor:
        """Fixed grid crops: the HR centre (hr_patch) of the first validation images (training
        images when there is no validation folder), float in [-1, 1]."""
        pairs = (self.validation or self.pairs)[:count]
        crops = [TF.center_crop(mod_crop(pair.hr, self.scale), [self.hr_patch, self.hr_patch]) for pair in pairs]
        return to_float(torch.stack(crops))


def load_paired_sr(
    *,
    name: str = "paired_sr",
    hr_dir: str,
    lr_dir: Optional[str] = None,
    lr_name: str = "{stem}",
    scale: int = 4,
    hr_patch: int = 96,
    channels: int = 3,
    augment: bool = True,
    val_hr_dir: Optional[str] = None,
    val_lr_dir: Optional[str] = None,
    val_lr_name: Optional[str] = None,
    num_classes: int = 0,
    hr_name: Optional[str] = None,
    val_hr_name: Optional[str] = None,
    alpha_background: AlphaBackground = "white",
) -> PairedSRData:
    check_scale(scale)
    if channels not in (1, 3):
        raise GanrunError(f"dataset.channels must be 1 or 3, got {channels}")
    if hr_patch < scale or hr_patch % scale:
        raise GanrunError(f"dataset.hr_patch={hr_patch} must be a multiple of dataset.scale={scale}, e.g. {scale * 24}")
    background_level(alpha_background)
    pairs = load_pairs(hr_dir=hr_dir, lr_dir=lr_dir, lr_name=lr_name, scale=scale, channels=channels, hr_name=hr_name,
                       alpha_background=alpha_background)
    validation = []
    if val_hr_dir is not None:
        validation = load_pairs(hr_dir=val_hr_dir, lr_dir=val_lr_dir, lr_name=val_lr_name or lr_name, scale=scale,
                                channels=channels, hr_name=val_hr_name or hr_name, alpha_background=alpha_background)
    if hr_name is not None and lr_dir is None:
        lr_dir = hr_dir  # one folder for both sides
    lr_source = f"LR from {lr_dir} ({lr_name})" if lr_dir is not None else "LR by bicubic downscaling"
    hr_source = f"{hr_dir} ({hr_name})" if hr_name is not None else hr_dir
    source = f"paired SR x{scale}: {len(pairs):,} HR images from {hr_source}, {lr_source}"
    if validation:
        source += f"; validation: {len(validation)} from {val_hr_dir}"
    return PairedSRData(source=source, resolution=hr_patch, channels=channels, pairs=pairs, validation=validation,
                        scale=scale, hr_patch=hr_patch, augment=augment, alpha_background=alpha_background)


class PairedBatches:
    """Endless, resumable stream of aligned crops `{"image": HR, "lr": LR}` (float, [-1, 1])."""

    def __init__(
        self,
        *,
        data: PairedSRData,
        batch_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
        rank: int = 0,
        **_: object,  # Batches' world_size / num_workers: crops are drawn per rank, in this process
    ):
        self.data, self.batch_size, self.seed, self.rank = data, batch_size, seed, rank
        self.device, self.channels_last = device, channels_last
        self.position = 0  # batches drawn so far: the whole state
        lr_patch = data.hr_patch // data.scale
        for pair in data.pairs:
            if min(pair.hr.shape[-2:]) < data.hr_patch:
                raise GanrunError(
                    f"{pair.hr_path or pair.name} is {_size(pair.hr)}, smaller than dataset.hr_patch={data.hr_patch}; "
                    "lower dataset.hr_patch or remove the image"
                )
        self.lr_patch = lr_patch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

    def rebatch(self, *, old_batch_size: int, new_batch_size: int) -> None:
        """Nothing to convert: `position` only seeds the next random crops, whatever their number."""

    def __iter__(self) -> "PairedBatches":
        return self

    def crops(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (HR crops, LR crops) of batch number `position`."""
        scale, lr_patch, hr_patch = self.data.scale, self.lr_patch, self.data.hr_patch
        rng = np.random.default_rng([self.seed, self.rank, position])
        hr_crops, lr_crops = [], []
        for index in rng.integers(0, len(self.data.pairs), size=self.batch_size):
            pair = self.data.pairs[index]
            lr_height, lr_width = pair.hr.shape[-2] // scale, pair.hr.shape[-1] // scale
            top, left = int(rng.integers(0, lr_height - lr_patch + 1)), int(rng.integers(0, lr_width - lr_patch + 1))
            flips = dict(zip(("hflip", "vflip", "transpose"), (rng.random(3) < 0.5) & self.data.augment))
            hr = pair.hr[:, top * scale : top * scale + hr_patch, left * scale : left * scale + hr_patch]
            hr_crops.append(augment(hr, **flips))
            if pair.lr is not None:
                lr_crops.append(augment(pair.lr[:, top : top + lr_patch, left : left + lr_patch], **flips))
        hr = torch.stack(hr_crops)
        lr = torch.stack(lr_crops) if lr_crops else bicubic_downscale(hr, scale)
        return hr, lr

    def __next__(self) -> dict[str, torch.Tensor]:
        hr, lr = self.crops(self.position)
        self.position += 1
        return {"image": self._to_device(hr), "lr": self._to_device(lr)}

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = to_float(images.to(self.device, non_blocking=True))
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
