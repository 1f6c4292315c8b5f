"""Inpainting: fill the holes of images (issue 13). Trains on any dataset of single images with
holes made on the fly (ganrun/data/masked.py, ganrun/data/masks.py) and an inpainting recipe
(model=inpaint: ganrun/recipes/inpaint.py).

`ganrun eval ckpt=RUN` measures on the run's held-out images (the last `dataset.holdout` of the
loader's order, never trained on) with a FIXED mask set: `evaluation_masks(count, size=S,
seed=eval seed, kind=free_form)`, `count` = min(num_samples, held-out images) masks per hole-size
bucket (0-10 % ... 50-60 %, as partial conv and LaMa report), held-out image i filled under
mask i of every bucket. The set is saved beside eval.json (eval_masks/...: PNGs + protocol.json)
and described in the stored protocol; free-form whatever the run trained on, so every
checkpoint is measured on the same holes. Per bucket and overall (all buckets' images):

| key | definition (outputs composited in uint8: valid pixels are the original's, bit for bit) |
|---|---|
| `l1` / `l1_hole` | mean absolute error / 255 over all pixels and channels / over the hole's pixels and channels |
| `psnr` / `psnr_hole` | 10 log10(255^2 / MSE), the MSE over the whole image / over the hole's pixels and channels (at most 80 dB: an exact fill would make means infinite) |
| `ssim` / `ssim_hole` | SSIM (Wang et al. 2004; torchmetrics, 11x11 Gaussian, sigma 1.5, RGB averaged): the map's mean over windows inside the image (as every ganrun task) / the map (window centred on each pixel, reflect-padded at the border, torchmetrics' full map) averaged over the hole's pixels |
| `lpips` | LPIPS v0.1 (AlexNet) of the whole composited image, when torchvision's ImageNet AlexNet weights are in the torch hub cache (else one line says why not) |
| `fid`, `kid_mean` | Inception (torch-fidelity's FID network) features of the composited outputs vs the same held-out originals; overall: every bucket's outputs vs the originals |

Means are over images (PSNR is averaged in dB per image, as BasicSR does). Beside every number,
`biharmonic_*`: the same images and masks filled by biharmonic inpainting (scikit-image;
ganrun/metrics/inpaint_baseline.py), measured the same way.

`eval.every` during training (rank 0) measures on the held-out images, one fixed free-form mask
per image taking the six buckets in turn (image i: bucket i mod 6), with the baseline of the same
holes logged beside (`eval/biharmonic_*`, computed once). best.pt follows `eval.best_metric`;
the default is FID (`eval.metrics=[fid]`, measurable offline with the bundled Inception), not
LPIPS, whose AlexNet backbone is an ImageNet download that offline machines lack: a run asking
for lpips without those weights measures the rest, says so in one line, and keeps best.pt by FID.

`ganrun sample ckpt=RUN input_dir=DIR out_dir=DIR [mask_dir=DIR]`: the holes of each image are its
transparent pixels (alpha < 128) and/or the white pixels (>= 128) of the mask in mask_dir with
its file stem (`ganrun.data.masks.UserHoles`: the policies on sizes and gray levels). Any size:
image and mask reflect-padded to the generator's multiple and cropped back, tile by tile above
`tile` pixels (default 1024, 64 of overlap); only hole pixels change, the rest is the input's,
bit for bit. Same relative names, PNG, no alpha. A file without holes, a mask that marks nothing
or an unreadable file is reported on its own line and skipped. Without input_dir: the run's grid
(damaged | mask | output | original) drawn by this checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from ganrun.config import build, choice
from ganrun.data.images import ImageData, list_images, warn
from ganrun.data.masked import HeldOut, held_out_images, masked_data, split_off
from ganrun.data.masks import (
    BUCKETS,
    KINDS,
    EvaluationMasks,
    UserHoles,
    check_kind,
    check_mask_ratio,
    evaluation_masks,
    hole_fraction,
)
from ganrun.errors import GanrunError, ShouldAbort, check_abort
from ganrun.files import cache_dir
from ganrun.hardware import choose_device
from ganrun.imaging import check_tiles, pad_to_multiple, tiled, to_float, to_uint8
from ganrun.loop.checkpoint import load_checkpoint, run_dir_of
from ganrun.loop.rebuild import rebuild_from_checkpoint
from ganrun.metrics.fidelity import FeatureExtractor, as_rgb, cautions, compute_metrics
from ganrun.metrics.image_quality import SSIM_RADIUS, PerceptualDistance, perceptual_distance_or_reason
from ganrun.metrics.inpaint_baseline import biharmonic_inpaint
from ganrun.tasks.base import Evaluator, Task, record_result

PER_IMAGE = ("l1_hole", "psnr_hole", "ssim_hole", "l1", "psnr", "ssim")  # always measured by ganrun eval
TRAINING_METRICS = (*PER_IMAGE, "lpips", "fid")  # what eval.metrics may name
EVAL_INCEPTION = ("fid", "kid")  # what `ganrun eval metrics=` may name for inpainting
HIGHER_IS_BETTER = ("psnr", "psnr_hole", "ssim", "ssim_hole")
BASELINE = "biharmonic"
EVAL_MASK_KIND = "free_form"  # the protocol: free-form holes, whatever the run trained on
DEFAULT_TILE, DEFAULT_OVERLAP = 1024, 64
BATCH = 16  # held-out images filled at once

# helpers



def inpaint_any_size(recipe: Any, G: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, *, tile: int = 0,
                     overlap: int = 0) -> torch.Tensor:
    """Holes filled at any size: images uint8 (N, C, H, W), masks float or bool (N, 1, H, W), 1 =
    hole, on G's device -> uint8 (N, C, H, W) whose valid pixels are `images`' bit for bit.
    Image and mask are padded together to `recipe.size_multiple` (a mirrored hole stays a hole)
    and cropped back, tile by tile above `tile` pixels; a tile without holes skips G."""
    channels = images.shape[1]
    masks = masks.float()

    def run(piece: torch.Tensor) -> torch.Tensor:
        height, width = piece.shape[-2:]
        if not bool((piece[:, channels:] > 0.5).any()):
            return piece[:, :channels]
        padded = pad_to_multiple(piece, recipe.size_multiple)
        filled = recipe.inpaint(G, padded[:, :channels], (padded[:, channels:] > 0.5).float())
        return filled[..., :height, :width]

    filled = tiled(run, torch.cat([to_float(images), masks], dim=1), scale=1, tile=tile, overlap=overlap)
    return torch.where(masks > 0.5, to_uint8(filled), images)


def image_values(output: torch.Tensor, original: torch.Tensor, hole: torch.Tensor) -> dict[str, float]:
    """`PER_IMAGE` of one filled image (module docstring: the definitions). output, original:
    uint8 (C, H, W), at least 11x11 (SSIM's window); hole: bool (H, W) with at least one True."""
    a, b = output.double(), original.double()
    difference = a - b
    hole_difference = difference[:, hole]
    mse, hole_mse = float(difference.pow(2).mean()), float(hole_difference.pow(2).mean())
    _, ssim_map = structural_similarity_index_measure(a.unsqueeze(0), b.unsqueeze(0), data_range=255.0,
                                                      return_full_image=True)
    ssim_map = ssim_map[0].mean(0)  # (H, W): the channels' mean, per window centre
    return {
        "l1_hole": float(hole_difference.abs().mean()) / 255.0,
        "psnr_hole": _psnr(hole_mse),
        "ssim_hole": float(ssim_map[hole].mean()),
        "l1": float(difference.abs().mean()) / 255.0,
        "psnr": _psnr(mse),
        "ssim": float(ssim_map[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS].mean()),
    }


# An exact fill (MSE 0, e.g. biharmonic on a flat background) would make PSNR, and every mean it
# enters, infinite. As pyiqa's psnr (eps 1e-8 on the [0, 1] scale), the MSE gets a floor: at most 80 dB.
PSNR_MSE_FLOOR = 255.0**2 * 1e-8


def _psnr(mse: float) -> float:
    """10 log10(255^2 / (MSE + 255^2 * 1e-8)) in dB, at most 80 (MSE on the 0-255 scale)."""
    return 10.0 * math.log10(255.0**2 / (mse + PSNR_MSE_FLOOR))


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}


def _check_size(size: int) -> None:
    if size < 2 * SSIM_RADIUS + 1:
        raise GanrunError(f"inpainting is measured with SSIM's 11x11 window: images of {size} px are too small "
                          "(train at dataset.resolution >= 16)")


def check_training_metrics(metrics: Sequence[str], best_metric: str) -> list[str]:
    """eval.metrics / eval.best_metric of an inpainting run. Raises GanrunError."""
    names = [str(name).lower() for name in metrics]
    if not names or not set(names) <= set(TRAINING_METRICS):
        raise GanrunError(f"inpainting runs measure {list(TRAINING_METRICS)}, got eval.metrics={names}; "
                          "e.g. eval.metrics=[fid,psnr_hole] eval.best_metric=fid")
    if best_metric not in names:
        raise GanrunError(f"eval.best_metric={best_metric!r} is not among eval.metrics={names}; "
                          f"e.g. eval.best_metric={names[0]}")
    return names


def check_mask_settings(dataset: Any) -> None:
    """The dataset.* keys of inpainting that can be checked without reading data. Raises GanrunError."""
    check_kind(dataset.get("masks", "free_form"), kinds=KINDS)
    check_mask_ratio(dataset.get("mask_ratio", (0.1, 0.5)))
    holdout = dataset.get("holdout", 0)
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise GanrunError(f"dataset.holdout must be a whole number >= 0 (0: no held-out split), got {holdout!r}")


def held_out_of(config: DictConfig, *, data_root: Optional[str] = None) -> HeldOut:
    """The held-out images of a run, from its saved config alone: the loader's data (`root`
    switched to `data_root` when given), split as training split it. Training masks are not
    needed, so a moved mask folder does not stop an evaluation. Raises GanrunError."""
    dataset = OmegaConf.to_container(config.dataset, resolve=True)
    owned = set(InpaintingTask.dataset_keys) | {"source"}
    loader = {key: value for key, value in dataset.items() if key not in owned}
    if data_root is not None and "root" in loader:
        loader["root"] = data_root
    data: ImageData = build(loader)
    holdout = dataset.get("holdout", 0)
    train, held = split_off(data, holdout)
    return held_out_images(held, start=len(train), holdout=holdout, source=data.source)


class Measured:
    """Running sums of one side (the GAN or the baseline) in one bucket: per-image rows, LPIPS
    sums, Inception features of its outputs."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.lpips_sum, self.lpips_count = 0.0, 0
        self.features: list[dict[str, torch.Tensor]] = []

    def values(self) -> dict[str, float]:
        values = _mean(self.rows)
        if self.lpips_count:
            values["lpips"] = self.lpips_sum / self.lpips_count
        return values


def _features(extractor: FeatureExtractor, images: torch.Tensor, *, label: str,
              should_abort: Optional[ShouldAbort]) -> dict[str, torch.Tensor]:
    batches = (as_rgb(images[start : start + BATCH]) for start in range(0, len(images), BATCH))
    return extractor(batches, total=len(images), label=label, should_abort=should_abort)


def _cat(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([item[key] for item in features]) for key in features[0]}


@torch.no_grad()
def measure_masks(recipe: Any, G: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, *, device: torch.device,
                  perceptual: Optional[PerceptualDistance] = None, extractor: Optional[FeatureExtractor] = None,
                  with_baseline: bool = True, label: str = "", should_abort: Optional[ShouldAbort] = None
                  ) -> dict[str, Measured]:
    """G (and, `with_baseline`, biharmonic inpainting) on uint8 `images` (N, C, S, S) under float
    `masks` (N, 1, S, S): {"gan": Measured, "biharmonic": Measured} with per-image values, LPIPS
    sums and (with `extractor`) Inception features of the composited outputs."""
    sides = {"gan": Measured(), **({BASELINE: Measured()} if with_baseline else {})}
    for start in range(0, len(images), BATCH):
        check_abort(should_abort, f"inpainting {label} ({start} of {len(images)} images)")
        originals, holes = images[start : start + BATCH], masks[start : start + BATCH]
        outputs = {"gan": inpaint_any_size(recipe, G, originals.to(device), holes.to(device)).cpu()}
        if with_baseline:
            outputs[BASELINE] = biharmonic_inpaint(originals, holes)
        for side, filled in outputs.items():
            measured = sides[side]
            measured.rows += [image_values(output, original, hole[0] > 0.5)
                              for output, original, hole in zip(filled, originals, holes)]
            if perceptual is not None:
                measured.lpips_sum += perceptual(filled, originals) * len(filled)
                measured.lpips_count += len(filled)
            if extractor is not None:
                measured.features.append(_features(extractor, filled, label=f"{side} {label}", should_abort=should_abort))
    return sides


def _inception_values(measured: Measured, real: dict[str, torch.Tensor], *, metrics: Sequence[str],
                      kid_subset_size: int) -> dict[str, float]:
    values = compute_metrics(_cat(measured.features), real, metrics=metrics, kid_subset_size=kid_subset_size)
    values.pop("kid_std", None)  # the spread of the subsets, stored with the protocol's cautions, not a table column
    return values


def format_table(buckets: dict[str, dict], overall: dict[str, dict]) -> str:
    """One row per bucket and overall; each cell 'GAN / biharmonic'."""
    keys = list(overall["gan"])
    header = f"{'bucket':<9}{'holes':>7}" + "".join(f"{key:>22}" for key in keys)
    lines = [header + f"    (each: GAN / {BASELINE})"]
    rows = [(name, entry["hole_fraction"], entry) for name, entry in buckets.items()]
    rows.append(("overall", overall["hole_fraction"], overall))
    for name, fraction, entry in rows:
        cells = "".join(f"{_cell(entry['gan'][key]) + ' / ' + _cell(entry[BASELINE][key]):>22}" for key in keys)
        lines.append(f"{name:<9}{fraction:>6.1%} " + cells)
    return "\n".join(lines)


def _cell(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def protocol_text(*, lpips: str, inception: Sequence[str]) -> str:
    measured = ("outputs composited in uint8 (valid pixels are the original's, bit for bit); per image on RGB 0-255: "
                "l1 = mean |output - original| / 255 over all pixels and channels, l1_hole = over the hole's pixels only; "
                "psnr = 10 log10(255^2 / MSE) over the whole image, psnr_hole = from the MSE over the hole's pixels only "
                "(MSE + 255^2 * 1e-8, so an exact fill reads 80 dB, not inf); "
                "ssim = torchmetrics SSIM (11x11 Gaussian, sigma 1.5) averaged over windows inside the image, ssim_hole = "
                "its map (window centred on each pixel, reflect-padded at the border) averaged over the hole's pixels; "
                f"means over images; {lpips}")
    if inception:
        measured += (f"; {', '.join(inception)}: composited outputs vs the same held-out originals, per bucket, "
                     "overall = every bucket's outputs vs the originals")
    return measured + f"; {BASELINE} = scikit-image inpaint_biharmonic of the same images and masks, measured the same way"


def _saved_masks(masks: EvaluationMasks, folder: Path) -> Path:
    """The mask set saved under `folder` (once per protocol) -> its path."""
    target = folder / f"{masks.kind}_{masks.size}px_seed{masks.seed}_{masks.count_per_bucket}"
    if not (target / "protocol.json").is_file():
        masks.save(target)
    return target


# the command: `ganrun eval ckpt=...` of an inpainting checkpoint


def evaluate_checkpoint(path: Path, cfg: DictConfig, *, device: torch.device, extractor: Optional[FeatureExtractor],
                        metrics: Sequence[str], perceptual: Optional[PerceptualDistance], lpips_reason: str,
                        should_abort: Optional[ShouldAbort] = None) -> dict:
    """Every bucket's numbers and the overall ones of one checkpoint beside the baseline's,
    printed with the protocol and recorded (eval.json beside it with the per-bucket rows, an
    eval/* row of the overall values in the run's metrics.jsonl)."""
    step = int(load_checkpoint(path)["progress"]["step"])
    recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
    split = held_out_of(config, data_root=cfg.data_root)
    size = int(split.images.shape[-1])
    _check_size(size)
    count = min(int(cfg.num_samples), len(split.images))
    if count < 1:
        raise GanrunError(f"num_samples must be >= 1, got {cfg.num_samples}")
    images = split.images[:count]
    masks = evaluation_masks(count, size=size, seed=int(cfg.seed), kind=EVAL_MASK_KIND)
    mask_folder = _saved_masks(masks, path.parent / "eval_masks")
    start = time.perf_counter()
    real = _features(extractor, images, label="held-out originals", should_abort=should_abort) if extractor else None
    buckets: dict[str, dict] = {}
    totals = {"gan": Measured(), BASELINE: Measured()}
    notes: list[str] = []
    for name in masks:
        sides = measure_masks(recipe, G, images, masks[name], device=device, perceptual=perceptual, extractor=extractor,
                              label=f"bucket {name}", should_abort=should_abort)
        entry: dict[str, Any] = {"hole_fraction": float(hole_fraction(masks[name]).mean()), "images": count}
        for side, measured in sides.items():
            entry[side] = measured.values()
            if extractor is not None:
                entry[side].update(_inception_values(measured, real, metrics=metrics, kid_subset_size=cfg.kid_subset_size))
            total = totals[side]
            total.rows += measured.rows
            total.lpips_sum, total.lpips_count = total.lpips_sum + measured.lpips_sum, total.lpips_count + measured.lpips_count
            total.features += measured.features
        if extractor is not None and not notes:  # every bucket has the same sample counts
            notes = [f"per bucket: {note}" for note in cautions(_cat(sides["gan"].features), real, metrics=metrics,
                                                                  kid_subset_size=cfg.kid_subset_size)]
        buckets[name] = entry
    overall: dict[str, Any] = {"hole_fraction": sum(entry["hole_fraction"] for entry in buckets.values()) / len(buckets),
                               "images": count * len(buckets)}
    for side, measured in totals.items():
        overall[side] = measured.values()
        if extractor is not None:
            overall[side].update(_inception_values(measured, real, metrics=metrics, kid_subset_size=cfg.kid_subset_size))
    generator = "G_ema" if cfg.ema else "G (raw)"
    protocol = {
        "images": f"{count:,} held-out images: {split.source}",
        "generator": generator,
        "masks": f"{masks.describe()}; saved in {mask_folder}",
        "mask_set": {**masks.protocol(), "folder": str(mask_folder)},
        "measurement": protocol_text(lpips=perceptual.description if perceptual else lpips_reason,
                                     inception=[key for key in EVAL_INCEPTION if key in metrics]),
        "title": f"{generator}, {count:,} held-out images x {len(buckets)} hole-size buckets (free-form), "
                 f"overall vs {BASELINE}",
    }
    if extractor is not None:
        protocol["feature_extractor"] = extractor.description
    if notes:
        protocol["cautions"] = notes
    print(f"{path} (step {step}), {generator}: {protocol['images']}")
    print(format_table(buckets, overall))
    print(f"masks: {protocol['masks']}")
    print(f"protocol: {protocol['measurement']}")
    for note in notes:
        print(f"  caution: {note}")
    result = {"checkpoint": str(path), "step": step, "metrics": overall["gan"],
              "baseline": {"name": BASELINE, "metrics": overall[BASELINE]}, "buckets": buckets,
              "hole_fraction": overall["hole_fraction"], "protocol": protocol,
              "seconds": round(time.perf_counter() - start, 1)}
    values = {**overall["gan"], **{f"{BASELINE}_{key}": value for key, value in overall[BASELINE].items()}}
    record_result(path, result, values=values)
    return result


# the command: `ganrun sample ckpt=... input_dir=... out_dir=...`


@torch.no_grad()
def inpaint_folder(recipe: Any, G: torch.nn.Module, *, input_dir: str, out_dir: str, mask_dir: Optional[str],
                   channels: int, device: torch.device, tile: int, overlap: int,
                   should_abort: Optional[ShouldAbort] = None) -> tuple[list[Path], list[str]]:
    """Every image under `input_dir` with holes filled, written to `out_dir` as PNG with the same
    relative name -> (written files, one line per skipped file). Raises GanrunError for a
    missing or empty input_dir or mask_dir, out_dir = input_dir, and when no file had holes."""
    folder, target = Path(input_dir).expanduser(), Path(out_dir).expanduser()
    if not folder.is_dir():
        raise GanrunError(f"input_dir={input_dir!r} is not a folder of images")
    if target.resolve() == folder.resolve():
        raise GanrunError(f"out_dir={out_dir!r} is input_dir: pick another folder, inputs are never overwritten")
    holes = UserHoles(mask_dir=mask_dir, channels=channels)
    masks_inside = Path(mask_dir).expanduser().resolve() if mask_dir else None
    files = [path for path in list_images(folder)  # a mask folder inside input_dir holds masks, not photos
             if masks_inside is None or masks_inside not in path.resolve().parents]
    if not files:
        raise GanrunError(f"input_dir={input_dir!r} holds no images")
    written: list[Path] = []
    problems: list[str] = []
    for path in files:
        check_abort(should_abort, f"inpainting ({len(written)} of {len(files)} images written to {target})")
        found = holes.read(path)
        if not found.ok:
            warn(f"skipped: {found.problem}")
            problems.append(found.problem)
            continue
        filled = inpaint_any_size(recipe, G, found.image.unsqueeze(0).to(device), found.mask.unsqueeze(0).to(device),
                                  tile=tile, overlap=overlap)[0].cpu()
        out = (target / path.relative_to(folder)).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(filled.permute(1, 2, 0).squeeze(-1).numpy()).save(out)
        written.append(out)
    if not written:
        raise GanrunError(f"no image of input_dir={input_dir!r} was filled: all {len(files)} were skipped "
                          f"(e.g. {problems[0]})")
    return written, problems


# classes


class InpaintingEvaluator(Evaluator):
    """`eval.every` for inpainting runs (rank 0): the held-out images under one fixed free-form
    mask each (the buckets in turn), `eval.metrics` of G and, computed once, of the biharmonic
    baseline (`biharmonic_*`); best.pt by eval.best_metric."""

    def __init__(self, *, settings: DictConfig, split: HeldOut, device: torch.device):
        metrics = check_training_metrics(settings.metrics, settings.best_metric)
        self.perceptual: Optional[PerceptualDistance] = None
        if "lpips" in metrics:
            self.perceptual, reason = perceptual_distance_or_reason(device=device, allow_download=True)
            if reason:  # offline without AlexNet: measure the rest, and keep best.pt by what is measurable
                metrics = [name for name in metrics if name != "lpips"]
                fallback = ""
                if settings.best_metric == "lpips":
                    metrics = metrics if "fid" in metrics else [*metrics, "fid"]
                    settings = OmegaConf.merge(settings, {"best_metric": "fid"})
                    fallback = "; best.pt follows fid instead"
                warn(f"eval.metrics: {reason}{fallback}")
        super().__init__(settings=settings)
        self.metrics, self.device = metrics, device
        _check_size(int(split.images.shape[-1]))
        count = min(int(settings.num_samples), len(split.images))
        self.images = split.images[:count]
        sets = evaluation_masks(-(-count // len(BUCKETS)), size=int(split.images.shape[-1]), kind=EVAL_MASK_KIND)
        names = list(sets)
        self.masks = torch.stack([sets[names[index % len(names)]][index // len(names)] for index in range(count)])
        self.extractor: Optional[FeatureExtractor] = None
        self.real: Optional[dict[str, torch.Tensor]] = None
        self.baseline: Optional[dict[str, float]] = None

    def higher_is_better(self, key: str) -> bool:
        return key in HIGHER_IS_BETTER

    def measure(self, recipe: Any, G: torch.nn.Module, *, step: int,
                should_abort: Optional[ShouldAbort] = None) -> dict[str, float]:
        if "fid" in self.metrics and self.extractor is None:
            self.extractor = FeatureExtractor(metrics=["fid"], cache_dir=cache_dir(), allow_download=True,
                                              device=self.device, precision=choice(self.settings.precision))
        if self.extractor is not None and self.real is None:
            self.real = _features(self.extractor, self.images, label="held-out originals", should_abort=should_abort)
        was_training = G.training
        try:
            sides = measure_masks(recipe, G, self.images, self.masks, device=self.device, perceptual=self.perceptual,
                                  extractor=self.extractor, with_baseline=self.baseline is None, label="held-out",
                                  should_abort=should_abort)
        finally:
            G.train(was_training)
        values = {side: self._values(measured) for side, measured in sides.items()}
        if self.baseline is None:
            self.baseline = values[BASELINE]
        return {**values["gan"], **{f"{BASELINE}_{key}": value for key, value in self.baseline.items()}}

    def _values(self, measured: Measured) -> dict[str, float]:
        values = measured.values()
        if self.extractor is not None:
            values.update(_inception_values(measured, self.real, metrics=["fid"], kid_subset_size=1000))
        return {key: values[key] for key in self.metrics}


class InpaintingTask(Task):
    name: ClassVar[str] = "inpainting"
    data_kinds: ClassVar[tuple[str, ...]] = ("masked",)
    dataset_keys: ClassVar[tuple[str, ...]] = ("masks", "mask_ratio", "mask_dir", "holdout")

    def prepare_data(self, data: Any, *, settings: dict) -> Any:
        """The loader's images with training holes and a held-out split (ganrun/data/masked.py)."""
        return masked_data(data, **settings)

    def check_config(self, cfg: DictConfig) -> None:
        check_mask_settings(cfg.dataset)
        if cfg.eval.every:
            check_training_metrics(cfg.eval.metrics, cfg.eval.best_metric)

    def training_evaluator(self, *, settings: DictConfig, data: Any, dataset_cfg: dict,
                           device: torch.device) -> Evaluator:
        return InpaintingEvaluator(settings=settings, split=data.test_split(), device=device)

    def evaluate(self, paths: list[Path], cfg: DictConfig, *, should_abort: Optional[ShouldAbort] = None) -> list[dict]:
        """Per bucket and overall, beside the biharmonic baseline (module docstring), sharing one
        Inception and one LPIPS network (or one line saying why there is no LPIPS)."""
        device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available(), key="device")
        metrics = [str(name).lower() for name in cfg.metrics]
        other = [name for name in metrics if name not in EVAL_INCEPTION]
        if other:
            raise GanrunError(f"inpainting checkpoints are measured by {', '.join(PER_IMAGE)}, lpips and metrics=[fid,kid]; "
                              f"{', '.join(other)} measure unconditional samples: e.g. metrics=[fid]")
        perceptual, reason = perceptual_distance_or_reason(device=device, allow_download=cfg.download)
        if reason:
            print(reason)
        extractor = FeatureExtractor(metrics=["fid"], cache_dir=cache_dir(), allow_download=cfg.download, device=device,
                                     precision=choice(cfg.precision))
        return [evaluate_checkpoint(path, cfg, device=device, extractor=extractor, metrics=metrics, perceptual=perceptual,
                                    lpips_reason=reason, should_abort=should_abort) for path in paths]

    @torch.no_grad()
    def sample(self, cfg: DictConfig, *, path: Path, device: torch.device,
               should_abort: Optional[ShouldAbort] = None) -> list[Path]:
        """input_dir= -> out_dir= (holes from alpha or mask_dir=, any size); without input_dir:
        the run's grid (damaged | mask | output | original) drawn by this checkpoint."""
        if (cfg.input_dir is None) != (cfg.out_dir is None):
            missing = "input_dir" if cfg.input_dir is None else "out_dir"
            raise GanrunError(f"{missing} is missing: run ganrun sample ckpt={cfg.ckpt} input_dir=FOLDER out_dir=FOLDER "
                              "(holes = transparent pixels, or mask_dir=MASKS with white = fill), or neither for the run's grid")
        if cfg.input_dir is None and cfg.mask_dir is not None:
            raise GanrunError(f"mask_dir={cfg.mask_dir} needs the images it belongs to: add input_dir=FOLDER out_dir=FOLDER")
        recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
        if cfg.input_dir is None:
            grid = load_checkpoint(path)["grid"]
            out = Path(cfg.out) if cfg.out else run_dir_of(path) / "samples" / f"inpainting_{'ema' if cfg.ema else 'raw'}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            recipe.save_grid(recipe.render(G, {key: value.to(device) for key, value in grid.items()}).cpu(), out, nrow=0)
            print(f"wrote {out} (rows: damaged | mask | output | original)")
            return [out]
        tile, overlap = check_tiles(cfg.tile, cfg.tile_overlap, default_tile=DEFAULT_TILE, default_overlap=DEFAULT_OVERLAP)
        written, problems = inpaint_folder(recipe, G, input_dir=cfg.input_dir, out_dir=cfg.out_dir, mask_dir=cfg.mask_dir,
                                           channels=config.dataset.channels, device=device, tile=tile, overlap=overlap,
                                           should_abort=should_abort)
        skipped = f", skipped {len(problems)} (reasons above)" if problems else ""
        print(f"wrote {len(written)} images to {Path(cfg.out_dir).expanduser()}{skipped}")
        return written
