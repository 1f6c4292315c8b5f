"""Super-resolution: paired LR/HR images (dataset=paired_sr), SRResNet/SRGAN. `ganrun eval`
measures PSNR/SSIM (+ LPIPS) against HR images with the bicubic baseline beside every number
(BasicSR's protocol, ganrun/metrics/image_quality.py); `ganrun sample input_dir= out_dir=`
super-resolves every image of a folder, any size, tile by tile.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import torch
from omegaconf import DictConfig

from ganrun.config import choice
from ganrun.data.paired_sr import Pair, load_pairs
from ganrun.errors import GanrunError, ShouldAbort, check_abort
from ganrun.hardware import choose_device
from ganrun.imaging import bicubic_upscale, check_tiles, tiled, to_float, to_uint8
from ganrun.loop.checkpoint import load_checkpoint
from ganrun.loop.rebuild import rebuild_from_checkpoint
from ganrun.metrics.image_quality import (
    LPIPS_SKIPPED,
    SR_METRICS,
    PerceptualDistance,
    flat_metrics,
    format_table,
    measure,
    perceptual_distance_or_reason,
)
from ganrun.tasks.base import Evaluator, Task, map_folder, record_result

# helpers


def protocol_text(*, scale: int, border: int, lr_source: str, lpips: str = "") -> str:
    return (
        f"x{scale}; uint8 outputs; HR mod-cropped to a multiple of {scale}; crop_border={border} px each side; "
        "PSNR (data range 255) and SSIM (11x11 Gaussian, sigma 1.5) from torchmetrics, on RGB and on "
        f"ITU-R BT.601 Y (16-235); {lpips + '; ' if lpips else ''}mean over images; LR: {lr_source}; "
        "bicubic = torch bicubic upscaling of the same LR"
    )


@torch.no_grad()
def measure_pairs(recipe, G: torch.nn.Module, pairs: Sequence[Pair], *, border: int, device: torch.device,
                  tile: int = 0, overlap: int = 32, perceptual: Optional[PerceptualDistance] = None,
                  should_abort: Optional[ShouldAbort] = None) -> list[dict]:
    """Per image: {"name", "sr": {metric: value}, "bicubic": {metric: value}}. `should_abort()`
    true before a pair raises SideWorkInterrupted."""
    rows = []
    for pair in pairs:
        check_abort(should_abort, "measuring image pairs")
        lr = to_float(pair.low_res(recipe.scale)).unsqueeze(0).to(device)
        sr = tiled(lambda x: recipe.super_resolve(G, x), lr, scale=recipe.scale, tile=tile, overlap=overlap)
        bicubic = bicubic_upscale(lr.float(), recipe.scale).clamp(-1, 1)
        rows.append({
            "name": pair.name,
            "sr": measure(to_uint8(sr[0]).cpu(), pair.hr, border=border, perceptual=perceptual),
            "bicubic": measure(to_uint8(bicubic[0]).cpu(), pair.hr, border=border, perceptual=perceptual),
        })
    return rows


def tile_settings(cfg: DictConfig) -> tuple[int, int]:
    """(tile, overlap) in LR pixels from `tile=`/`tile_overlap=`; null = 128 and 32. Raises GanrunError."""
    return check_tiles(cfg.tile, cfg.tile_overlap, default_tile=128, default_overlap=32)


def check_border(border: Optional[int], scale: int) -> int:
    border = scale if border is None else border
    if border < 0:
        raise GanrunError(f"crop_border must be >= 0 (or null for the scale), got {border}")
    return border



@torch.no_grad()
def super_resolve_folder(recipe, G: torch.nn.Module, *, input_dir: str, out_dir: str, channels: int,
                         device: torch.device, tile: int, overlap: int, alpha_background: Any = "white",
                         should_abort: Optional[ShouldAbort] = None) -> list[Path]:
    """Every image under `input_dir` (any size) super-resolved tile by tile into `out_dir` as PNG
    with the same relative name (`map_folder`: decoding policy, skipped files, interruption)."""

    def upscale(image: torch.Tensor) -> torch.Tensor:
        lr = to_float(image).unsqueeze(0).to(device)
        return to_uint8(tiled(lambda x: recipe.super_resolve(G, x), lr, scale=recipe.scale, tile=tile, overlap=overlap)[0]).cpu()

    written = map_folder(upscale, input_dir=input_dir, out_dir=out_dir, channels=channels,
                         alpha_background=alpha_background, verb="super-resolving", should_abort=should_abort)
    print(f"wrote {len(written)} images (x{recipe.scale}) to {Path(out_dir).expanduser()}")
    return written


# the command: `ganrun eval ckpt=...` of a super-resolution checkpoint


def evaluate_sr_checkpoint(path, cfg, *, device: torch.device, perceptual: Optional[PerceptualDistance] = None,
                           should_abort: Optional[ShouldAbort] = None) -> dict:
    """The per-image table and means of one checkpoint, printed with the protocol and recorded
    as `ganrun eval` records FID (eval.json beside it, an eval/* row in metrics.jsonl)."""
    step = int(load_checkpoint(path)["progress"]["step"])
    recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
    dataset = config.dataset
    if cfg.dataset.hr_dir is not None:
        hr_dir, lr_dir, lr_name = cfg.dataset.hr_dir, cfg.dataset.lr_dir, cfg.dataset.lr_name or "{stem}"
        hr_name = cfg.dataset.hr_name
    elif dataset.get("val_hr_dir"):
        hr_dir, lr_dir = dataset.val_hr_dir, dataset.get("val_lr_dir")
        lr_name = cfg.dataset.lr_name or dataset.get("val_lr_name") or dataset.lr_name
        hr_name = cfg.dataset.hr_name or dataset.get("val_hr_name") or dataset.get("hr_name")
    else:
        raise GanrunError(
            f"{path} was trained without a validation folder: pass the pairs to measure on, e.g. "
            f"dataset.hr_dir=Set5/HR dataset.lr_dir=Set5/LR_bicubic/X{recipe.scale} dataset.lr_name='{{stem}}x{recipe.scale}'"
        )
    border = check_border(cfg.crop_border, recipe.scale)
    pairs = load_pairs(hr_dir=hr_dir, lr_dir=lr_dir, lr_name=lr_name, hr_name=hr_name, scale=recipe.scale,
                       channels=dataset.channels, alpha_background=dataset.get("alpha_background", "white"))
    start = time.perf_counter()
    tile, overlap = tile_settings(cfg)
    rows = measure_pairs(recipe, G, pairs, border=border, device=device, tile=tile, overlap=overlap,
                         perceptual=perceptual, should_abort=should_abort)
    lr_source = f"{lr_dir} ({lr_name})" if lr_dir is not None else f"bicubic downscaling of {hr_dir} (torch, antialiased)"
    protocol = {
        "images": f"{len(rows)} pairs, HR from {hr_dir}",
        "generator": "G_ema" if cfg.ema else "G (raw)",
        "measurement": protocol_text(scale=recipe.scale, border=border, lr_source=lr_source,
                                     lpips=perceptual.description if perceptual else LPIPS_SKIPPED),
    }
    protocol["title"] = f"{protocol['generator']}, x{recipe.scale}, {protocol['images']}, crop_border={border}"
    print(f"{path} (step {step}), {protocol['generator']}: {protocol['images']}")
    print(format_table(rows))
    print(f"protocol: {protocol['measurement']}")
    result = {"checkpoint": str(path), "step": step, "metrics": flat_metrics(rows), "protocol": protocol,
              "per_image": rows, "seconds": round(time.perf_counter() - start, 1)}
    record_result(path, result, values=result["metrics"])
    return result


# in training


class ValidationPSNR(Evaluator):
    """`eval.every` for super-resolution runs (rank 0): PSNR/SSIM of G_ema on the validation
    pairs (dataset.val_hr_dir), best.pt by eval.best_metric (higher is better)."""

    def __init__(self, *, settings, pairs: Sequence[Pair], scale: int, device: torch.device):
        if not pairs:
            raise GanrunError(
                "eval.every > 0 on a super-resolution run needs validation pairs: set dataset.val_hr_dir "
                "(and dataset.val_lr_dir if they come with LR files), e.g. dataset.val_hr_dir=../shared/data/sr/Set5/HR"
            )
        super().__init__(settings=settings)
        self.pairs, self.scale, self.device = list(pairs), scale, device
        self.metrics = [str(name).lower() for name in settings.metrics]
        if not self.metrics or not set(self.metrics) <= set(SR_METRICS) or settings.best_metric not in self.metrics:
            raise GanrunError(
                f"super-resolution runs measure {list(SR_METRICS)}, got eval.metrics={self.metrics} and "
                f"eval.best_metric={settings.best_metric}; e.g. eval.metrics=[psnr_y,ssim_y] eval.best_metric=psnr_y"
            )

    def higher_is_better(self, key: str) -> bool:
        return True  # PSNR and SSIM

    def measure(self, recipe: Any, G: torch.nn.Module, *, step: int,
                should_abort: Optional[ShouldAbort] = None) -> dict[str, float]:
        values = flat_metrics(measure_pairs(recipe, G, self.pairs, border=self.scale, device=self.device, tile=256,
                                            should_abort=should_abort))
        key = self.settings.best_metric
        return {**{name: values[name] for name in self.metrics}, f"bicubic_{key}": values[f"bicubic_{key}"]}


class SuperResolutionTask(Task):
    name: ClassVar[str] = "super_resolution"
    data_kinds: ClassVar[tuple[str, ...]] = ("paired_sr",)

    def check_config(self, cfg: DictConfig) -> None:
        if not cfg.eval.every:
            return
        metrics = [str(name).lower() for name in cfg.eval.metrics]
        if not metrics or not set(metrics) <= set(SR_METRICS) or cfg.eval.best_metric not in metrics:
            raise GanrunError(
                f"super-resolution runs measure {list(SR_METRICS)}, got eval.metrics={metrics} and "
                f"eval.best_metric={cfg.eval.best_metric}; e.g. eval.metrics=[psnr_y,ssim_y] eval.best_metric=psnr_y"
            )

    def training_evaluator(self, *, settings: DictConfig, data: Any, dataset_cfg: dict,
                           device: torch.device) -> Evaluator:
        return ValidationPSNR(settings=settings, pairs=data.validation, scale=data.scale, device=device)

    def evaluate(self, paths: list[Path], cfg: DictConfig, *, should_abort: Optional[ShouldAbort] = None) -> list[dict]:
        """PSNR/SSIM (+ LPIPS) of each checkpoint, sharing one LPIPS network (or one reason for none)."""
        device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available(), key="device")
        perceptual, reason = perceptual_distance_or_reason(device=device, allow_download=cfg.download)
        if reason:
            print(reason)
        return [evaluate_sr_checkpoint(path, cfg, device=device, perceptual=perceptual, should_abort=should_abort)
                for path in paths]

    def sample(self, cfg: DictConfig, *, path: Path, device: torch.device,
               should_abort: Optional[ShouldAbort] = None) -> list[Path]:
        if cfg.input_dir is None or cfg.out_dir is None:
            missing = " and ".join(key for key in ("input_dir", "out_dir") if cfg[key] is None)
            raise GanrunError(
                f"{cfg.ckpt} is a super-resolution checkpoint: it super-resolves a folder of images, and {missing} "
                f"{'is' if ' and ' not in missing else 'are'} missing; run ganrun sample ckpt={cfg.ckpt} "
                "input_dir=LR_FOLDER out_dir=SR_FOLDER (n=, out= and interpolate= are for generation checkpoints)"
            )
        tile, overlap = tile_settings(cfg)
        recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
        return super_resolve_folder(recipe, G, input_dir=cfg.input_dir, out_dir=cfg.out_dir, channels=config.dataset.channels,
                                    device=device, tile=tile, overlap=overlap,
                                    alpha_background=config.dataset.get("alpha_background", "white"),
                                    should_abort=should_abort)
