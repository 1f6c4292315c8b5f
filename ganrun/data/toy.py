"""Toy 2-D Gaussian mixtures (`dataset=ring8`, `dataset=grid25`), the mode-coverage metric
and scatter-plot "sample grids".

The mixtures are the benchmarks of Unrolled GAN (Metz et al. 2017), VEEGAN (Srivastava et
al. 2017) and PacGAN (Lin et al. 2018): 8 Gaussians on a circle of radius 2 (std 0.02) and a
5x5 grid at {-4, -2, 0, 2, 4} (std 0.05). Coverage follows their protocol: a sample is
high quality when it lies within 3 std of its nearest mode, and a mode is covered when at
least 1 % of the samples are high-quality samples of that mode.

Points flow through `ganrun.data.Batches` like images do: the set is generated once
(seeded) into one float tensor (N, 2), each point labelled with its mode, so conditional
training works on toy data too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from PIL import Image, ImageDraw

from ganrun.config import build
from ganrun.data.images import ImageData
from ganrun.errors import GanrunError

# helpers


def ring_centres(*, modes: int, radius: float) -> torch.Tensor:
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def grid_centres(*, side: int, spacing: float) -> torch.Tensor:
    axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing  # 5, 2 -> -4..4
    return torch.cartesian_prod(axis, axis)


def mode_coverage(
    samples: torch.Tensor, *, centres: torch.Tensor, std: float, within_stds: float = 3.0, min_fraction: float = 0.01
) -> dict[str, float]:
    """`modes/covered` (count) and `modes/high_quality` (fraction of samples within
    `within_stds` std of their nearest mode); a mode counts as covered when at least
    `min_fraction` of all samples are high-quality samples assigned to it."""
    samples = samples.detach().float().cpu().reshape(len(samples), -1)
    distances = torch.cdist(samples, centres.float())
    nearest_distance, nearest_mode = distances.min(dim=1)
    high_quality = nearest_distance <= within_stds * std  # NaN samples compare False: never high quality
    per_mode = torch.bincount(nearest_mode[high_quality], minlength=len(centres))
    covered = int((per_mode >= min_fraction * len(samples)).sum())
    return {"modes/covered": float(covered), "modes/high_quality": float(high_quality.float().mean())}


def save_scatter(
    points: torch.Tensor,
    path: Path,
    *,
    centres: Optional[torch.Tensor] = None,
    std: float = 0.0,
    extent: Optional[float] = None,
    size: int = 512,
) -> None:
    """Samples as dots over the real mode centres (rings of radius 3 std), on fixed axes
    [-extent, extent]^2 so plots from different steps and runs compare at a glance."""
    points = points.detach().float().cpu().reshape(len(points), -1)[:, :2]
    if extent is None:
        extent = 1.5 * float(centres.abs().max()) if centres is not None and len(centres) else 5.0
    scale = (size - 1) / (2 * extent)

    def pixel(x: float, y: float) -> tuple[float, float]:
        return (x + extent) * scale, (extent - y) * scale  # y grows upwards

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.line([pixel(-extent, 0), pixel(extent, 0)], fill=(225, 225, 225))
    draw.line([pixel(0, -extent), pixel(0, extent)], fill=(225, 225, 225))
    for x, y in points[torch.isfinite(points).all(dim=1)].tolist():
        px, py = pixel(x, y)
        draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=(200, 30, 30))
    if centres is not None:
        ring = max(4.0, 3 * std * scale)
        for x, y in centres.tolist():
            px, py = pixel(x, y)
            draw.ellipse([px - ring, py - ring, px + ring, py + ring], outline=(20, 60, 200), width=2)
    draw.rectangle([0, 0, size - 1, size - 1], outline=(120, 120, 120))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# the dataset


@dataclass
class ToyData(ImageData):
    """A Gaussian mixture as training data: `images` holds float points (N, 2), `labels` their modes."""

    centres: Optional[torch.Tensor] = None  # (modes, 2)
    std: float = 0.0
    diagnostic_samples: int = 2500  # the VEEGAN/PacGAN protocol's sample count

    def diagnostics(self, samples: torch.Tensor) -> dict[str, float]:
        """What the loop logs at every sample point, from `diagnostic_samples` G_ema samples."""
        return mode_coverage(samples, centres=self.centres, std=self.std)

    @property
    def scatter_reference(self) -> dict:
        """What `save_scatter` draws under the samples: the real mode centres."""
        return {"centres": self.centres, "std": self.std}


def _mixture(
    *,
    name: str,
    centres: torch.Tensor,
    std: float,
    description: str,
    num_points: int = 100_000,
    seed: int = 0,
    resolution: int = 0,
    channels: int = 2,
    num_classes: int = 0,
    diagnostic_samples: int = 2500,
) -> ToyData:
    """`num_points` seeded samples of the mixture. `resolution` must be 0 (points, not images)
    and `channels` 2 (coordinates): the model configs read both from the dataset node."""
    if resolution != 0 or channels != 2:
        raise GanrunError(
            f"dataset={name} holds 2-D points: dataset.resolution must be 0 and dataset.channels 2, "
            f"got {resolution} and {channels}"
        )
    if num_classes not in (0, len(centres)):
        raise GanrunError(f"dataset.num_classes for {name} must be {len(centres)} (one class per mode), got {num_classes}")
    if std <= 0 or num_points < 1 or diagnostic_samples < 1:
        raise GanrunError(
            f"dataset={name} needs std > 0, num_points >= 1 and diagnostic_samples >= 1, "
            f"got {std}, {num_points} and {diagnostic_samples}"
        )
    generator = torch.Generator().manual_seed(seed)
    modes = torch.randint(len(centres), (num_points,), generator=generator)
    points = centres[modes] + std * torch.randn(num_points, 2, generator=generator)
    return ToyData(
        source=f"{name}: {num_points:,} points from {description} (seed {seed})",
        images=points,
        labels=modes,
        resolution=0,
        channels=2,
        centres=centres,
        std=std,
        diagnostic_samples=diagnostic_samples,
    )


def load_ring(*, name: str = "ring8", modes: int = 8, radius: float = 2.0, std: float = 0.02, **settings: Any) -> ToyData:
    """`modes` Gaussians evenly spaced on a circle; `settings` as in `_mixture` (num_points, seed, ...)."""
    if modes < 1 or radius <= 0:
        raise GanrunError(f"dataset.modes must be >= 1 and dataset.radius > 0, got {modes} and {radius}")
    description = f"{modes} Gaussians on a circle of radius {radius}, std {std}"
    return _mixture(name=name, centres=ring_centres(modes=modes, radius=radius), std=std, description=description, **settings)


def load_grid(*, name: str = "grid25", side: int = 5, spacing: float = 2.0, std: float = 0.05, **settings: Any) -> ToyData:
    """A `side` x `side` grid of Gaussians centred on 0; `settings` as in `_mixture` (num_points, seed, ...)."""
    if side < 1 or spacing <= 0:
        raise GanrunError(f"dataset.side must be >= 1 and dataset.spacing > 0, got {side} and {spacing}")
    description = f"a {side}x{side} grid of Gaussians, spacing {spacing}, std {std}"
    return _mixture(name=name, centres=grid_centres(side=side, spacing=spacing), std=std, description=description, **settings)


def scatter_reference_for(dataset: Mapping[str, Any]) -> Optional[dict]:
    """`save_scatter`'s reference (mode centres, std) from a dataset config alone, or None for
    datasets that are not toy mixtures: what `ganrun sample` needs to draw a checkpoint's rings."""
    if str(dataset.get("_target_", "")).rsplit(".", 1)[-1] not in ("load_ring", "load_grid"):
        return None
    settings = {key: value for key, value in dataset.items() if key != "source"}
    return build({**settings, "num_points": 1}).scatter_reference
