"""PSNR and SSIM the way super-resolution papers report them (BasicSR's protocol), with the
bicubic baseline measured the same way beside every number.

Protocol: SR outputs quantized to uint8 (as saved PNGs), HR mod-cropped to a multiple of the
scale, `crop_border` pixels (default: the scale) removed from every side of both images, then
torchmetrics' PSNR (data range 255) and SSIM (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
only windows inside the image: Wang et al. 2004 as BasicSR computes it) per image, on RGB
(SSIM averaged over channels) and on the Y channel of ITU-R BT.601 (the 16-235 luma of
MATLAB's rgb2ycbcr; not rounded). The mean over images is the headline number.

LPIPS (Zhang et al. 2018; AlexNet with the v0.1 linear weights, as the `lpips` package's
default) joins them when torchvision's ImageNet AlexNet weights are in the local torch hub cache
(or can be downloaded there): torchmetrics ships only the linear weights. Without them the table
says so in one line; the backbone is never replaced by random weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ganrun.errors import GanrunError
from ganrun.evaluation import TrainingEvaluator, record_result
from ganrun.data.paired_sr import Pair
from ganrun.imaging import bicubic_upscale, tiled, to_float, to_uint8

SR_METRICS = ("psnr_y", "ssim_y", "psnr", "ssim")
LPIPS_SKIPPED = "LPIPS not computed (no ImageNet AlexNet weights in the torch hub cache)"
# ITU-R BT.601 for RGB in [0, 255]: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255
BT601_Y = (65.481, 128.553, 24.966)
SSIM_RADIUS = 5  # of the 11x11 window torchmetrics derives from sigma 1.5

# helpers


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 255] -> (..., 1, H, W) BT.601 luma in [16, 235]; one channel stays as it is."""
    if images.shape[-3] == 1:
        return images
    weights = torch.tensor(BT601_Y, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return 16.0 + (images * weights).sum(dim=-3, keepdim=True) / 255.0


def crop_border(images: torch.Tensor, border: int) -> torch.Tensor:
    return images[..., border : images.shape[-2] - border, border : images.shape[-1] - border] if border else images


def measure(output: torch.Tensor, reference: torch.Tensor, *, border: int,
            perceptual: Optional["PerceptualDistance"] = None) -> dict[str, float]:
    """PSNR/SSIM on RGB and Y of two uint8 (C, H, W) images, `border` pixels cropped from each
    side; LPIPS of the same crops too when `perceptual` is given."""
    if output.shape != reference.shape:
        raise GanrunError(f"cannot compare images of shapes {tuple(output.shape)} and {tuple(reference.shape)}")
    if min(output.shape[-2:]) - 2 * border < 11:
        raise GanrunError(f"an image of {output.shape[-1]}x{output.shape[-2]} is too small for crop_border={border} and SSIM's 11x11 window")
    rgb = crop_border(output.double(), border).unsqueeze(0), crop_border(reference.double(), border).unsqueeze(0)
    luma = rgb_to_y(rgb[0]), rgb_to_y(rgb[1])
    values = {}
    for suffix, (a, b) in (("", rgb), ("_y", luma)):
        values[f"psnr{suffix}"] = float(peak_signal_noise_ratio(a, b, data_range=255.0))
        values[f"ssim{suffix}"] = ssim_valid(a, b)
    if perceptual is not None:
        values["lpips"] = perceptual(rgb[0], rgb[1])
    return values


def ssim_valid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM over the windows that lie inside the image (as MATLAB's ssim and BasicSR). The
    torchmetrics value itself also averages reflect-padded windows along the border, which
    reads ~0.001 different on small images; its map with those 5-pixel strips removed does not."""
    _, ssim_map = structural_similarity_index_measure(a, b, data_range=255.0, return_full_image=True)
    return float(ssim_map[..., SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS].mean())


class PerceptualDistance:
    """LPIPS of two (N, C, H, W) batches with values in [0, 255] (lower = closer), via torchmetrics'
    LearnedPerceptualImagePatchSimilarity on the images scaled to [-1, 1]; one channel is
    repeated to RGB. Build it with `perceptual_distance_or_reason`."""

    description = "LPIPS v0.1 (AlexNet, torchmetrics) on the same cropped RGB images in [-1, 1], lower is better"

    def __init__(self, *, device: torch.device):
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.device = device
        self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="mean").to(device)

    @torch.no_grad()
    def __call__(self, output: torch.Tensor, reference: torch.Tensor) -> float:
        pair = [image.to(self.device, torch.float32).div(127.5).sub(1.0) for image in (output, reference)]
        pair = [image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image for image in pair]
        self.metric.reset()
        return float(self.metric(*pair))


def lpips_backbone_url() -> str:
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1.url  # what torchmetrics' LPIPS loads through torchvision


def lpips_backbone_path() -> Path:
    """Where torchvision looks for (and downloads) that file: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(lpips_backbone_url()).name


def perceptual_distance_or_reason(*, device: torch.device, allow_download: bool) -> tuple[Optional[PerceptualDistance], str]:
    """(LPIPS, "") when AlexNet's ImageNet weights are in the torch hub cache or, if allowed, can
    be fetched there; else (None, the one-line reason and fix)."""
    from ganrun.metrics.inception import try_download

    url, path = lpips_backbone_url(), lpips_backbone_path()
    if not path.is_file() and not (allow_download and try_download(url, path)):
        tried = "the download failed" if allow_download else "downloading is disabled (download=false)"
        return None, (
            f"LPIPS not computed: torchvision's ImageNet AlexNet weights are not at {path} ({tried}); "
            f"put {path.name} from {url} there (or point TORCH_HOME at a cache that has it)"
        )
    return PerceptualDistance(device=device), ""


def protocol_text(*, scale: int, border: int, lr_source: str, lpips: str = "") -> str:
    return (
        f"x{scale}; uint8 outputs; HR mod-cropped to a multiple of {scale}; crop_border={border} px each side; "
        "PSNR (data range 255) and SSIM (11x11 Gaussian, sigma 1.5) from torchmetrics, on RGB and on "
        f"ITU-R BT.601 Y (16-235); {lpips + '; ' if lpips else ''}mean over images; LR: {lr_source}; "
        "bicubic = torch bicubic upscaling of the same LR"
    )


@torch.no_grad()
def measure_pairs(recipe, G: torch.nn.Module, pairs: Sequence[Pair], *, border: int, device: torch.device,
                  tile: int = 0, overlap: int = 32, perceptual: Optional[PerceptualDistance] = None) -> list[dict]:
    """Per image: {"name", "sr": {metric: value}, "bicubic": {metric: value}}."""
    rows = []
    for pair in pairs:
        lr = to_float(pair.low_res(recipe.scale)).unsqueeze(0).to(device)
        sr = tiled(lambda x: recipe.super_resolve(G, x), lr, scale=recipe.scale, tile=tile, overlap=overlap)
        bicubic = bicubic_upscale(lr.float(), recipe.scale).clamp(-1, 1)
        rows.append({
            "name": pair.name,
            "sr": measure(to_uint8(sr[0]).cpu(), pair.hr, border=border, perceptual=perceptual),
            "bicubic": measure(to_uint8(bicubic[0]).cpu(), pair.hr, border=border, perceptual=perceptual),
        })
    return rows


def metric_keys(rows: list[dict]) -> list[str]:
    """What was measured, Y-channel numbers first (the headline), LPIPS last when present."""
    return sorted(rows[0]["sr"], key=lambda key: SR_METRICS.index(key) if key in SR_METRICS else len(SR_METRICS))


def mean_of(rows: list[dict], side: str) -> dict[str, float]:
    return {key: sum(row[side][key] for row in rows) / len(rows) for key in metric_keys(rows)}


def format_table(rows: list[dict]) -> str:
    keys = metric_keys(rows)
    header = f"{'image':<16}" + "".join(f"{key:>10}" for key in keys) + "  |" + "".join(
        f"{'bic_' + key:>12}" for key in keys)
    lines = [header]
    for name, sr, bicubic in [(row["name"], row["sr"], row["bicubic"]) for row in rows] + [
        ("mean", mean_of(rows, "sr"), mean_of(rows, "bicubic"))
    ]:
        lines.append(f"{name[:16]:<16}" + "".join(f"{sr[key]:10.4f}" for key in keys) + "  |"
                     + "".join(f"{bicubic[key]:12.4f}" for key in keys))
    return "\n".join(lines)


def flat_metrics(rows: list[dict]) -> dict[str, float]:
    """The means, as metric keys: psnr_y, ..., bicubic_psnr_y, ..."""
    sr, bicubic = mean_of(rows, "sr"), mean_of(rows, "bicubic")
    return {**sr, **{f"bicubic_{key}": value for key, value in bicubic.items()}}


def check_border(border: Optional[int], scale: int) -> int:
    border = scale if border is None else border
    if border < 0:
        raise GanrunError(f"crop_border must be >= 0 (or null for the scale), got {border}")
    return border


# the command: `ganrun eval ckpt=...` of a super-resolution checkpoint


def is_super_resolution(checkpoint: dict) -> bool:
    return str(checkpoint["config"]["model"].get("_target_", "")).startswith("ganrun.recipes.sr.")


def evaluate_sr_checkpoints(paths: Sequence[Path], cfg) -> list[dict]:
    """`evaluate_sr_checkpoint` for each path, sharing one LPIPS network (or one reason for none)."""
    from ganrun.config import choice
    from ganrun.hardware import choose_device

    device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available())
    perceptual, reason = perceptual_distance_or_reason(device=device, allow_download=cfg.download)
    if reason:
        print(reason)
    return [evaluate_sr_checkpoint(path, cfg, device=device, perceptual=perceptual) for path in paths]


def evaluate_sr_checkpoint(path, cfg, *, device: torch.device, perceptual: Optional[PerceptualDistance] = None) -> dict:
    """The per-image table and means of one checkpoint, printed with the protocol and recorded
    as `ganrun eval` records FID (eval.json beside it, an eval/* row in metrics.jsonl)."""
    from ganrun.loop.checkpoint import load_checkpoint
    from ganrun.sampling import rebuild_from_checkpoint
    from ganrun.data.paired_sr import load_pairs

    step = int(load_checkpoint(path)["progress"]["step"])
    recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
    dataset = config.dataset
    if cfg.dataset.hr_dir is not None:
        hr_dir, lr_dir, lr_name = cfg.dataset.hr_dir, cfg.dataset.lr_dir, cfg.dataset.lr_name or "{stem}"
    elif dataset.get("val_hr_dir"):
        hr_dir, lr_dir = dataset.val_hr_dir, dataset.get("val_lr_dir")
        lr_name = cfg.dataset.lr_name or dataset.get("val_lr_name") or dataset.lr_name
    else:
        raise GanrunError(
            f"{path} was trained without a validation folder: pass the pairs to measure on, e.g. "
            f"dataset.hr_dir=Set5/HR dataset.lr_dir=Set5/LR_bicubic/X{recipe.scale} dataset.lr_name='{{stem}}x{recipe.scale}'"
        )
    border = check_border(cfg.crop_border, recipe.scale)
    pairs = load_pairs(hr_dir=hr_dir, lr_dir=lr_dir, lr_name=lr_name, scale=recipe.scale, channels=dataset.channels)
    start = time.perf_counter()
    rows = measure_pairs(recipe, G, pairs, border=border, device=device, tile=cfg.tile, overlap=cfg.tile_overlap,
                         perceptual=perceptual)
    lr_source = f"{lr_dir} ({lr_name})" if lr_dir is not None else f"bicubic downscaling of {hr_dir} (torch, antialiased)"
    protocol = {
        "images": f"{len(rows)} pairs, HR from {hr_dir}",
        "generator": "G_ema" if cfg.ema else "G (raw)",
        "measurement": protocol_text(scale=recipe.scale, border=border, lr_source=lr_source,
                                     lpips=PerceptualDistance.description if perceptual else LPIPS_SKIPPED),
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


class ValidationPSNR(TrainingEvaluator):
    """`eval.every` for super-resolution runs (rank 0): PSNR/SSIM of G_ema on the validation
    pairs (dataset.val_hr_dir), best.pt by eval.best_metric (higher is better). The best-so-far
    state (state_dict) is TrainingEvaluator's; the measurement is its own."""

    def __init__(self, *, settings, pairs: Sequence[Pair], scale: int, device: torch.device):
        if not pairs:
            raise GanrunError(
                "eval.every > 0 on a super-resolution run needs validation pairs: set dataset.val_hr_dir "
                "(and dataset.val_lr_dir if they come with LR files), e.g. dataset.val_hr_dir=../shared/data/sr/Set5/HR"
            )
        self.settings, self.pairs, self.scale, self.device = settings, list(pairs), scale, device
        self.metrics = [str(name).lower() for name in settings.metrics]
        if not self.metrics or not set(self.metrics) <= set(SR_METRICS) or settings.best_metric not in self.metrics:
            raise GanrunError(
                f"super-resolution runs measure {list(SR_METRICS)}, got eval.metrics={self.metrics} and "
                f"eval.best_metric={settings.best_metric}; e.g. eval.metrics=[psnr_y,ssim_y] eval.best_metric=psnr_y"
            )
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None

    def __call__(self, recipe, G: torch.nn.Module, *, step: int) -> tuple[dict[str, float], bool]:
        start = time.perf_counter()
        rows = measure_pairs(recipe, G, self.pairs, border=self.scale, device=self.device, tile=256)
        values = flat_metrics(rows)
        key = self.settings.best_metric
        improved = self.best is None or values[key] > self.best
        if improved:
            self.best, self.best_step = values[key], step
        scalars = {f"eval/{name}": values[name] for name in self.metrics}
        scalars[f"eval/bicubic_{key}"] = values[f"bicubic_{key}"]
        scalars["eval/seconds"] = time.perf_counter() - start
        return scalars, improved
