"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable augmentation is applied to everything D sees, real and fake,
in the D and the G step, so D cannot memorize a small training set and G still gets
gradients through the augmentation. The math is a port of the official implementation,
mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py (BSD-2-Clause): per-sample random
parameters, images in [-1, 1], translation pads with zeros.

Randomness comes from torch's global generator, which checkpoints save and restore, so a
resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ganrun.errors import GanrunError

# helpers


def _per_sample_uniform(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (_per_sample_uniform(x) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * (_per_sample_uniform(x) * 2) + x_mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    x_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - x_mean) * (_per_sample_uniform(x) + 0.5) + x_mean


def _index_grids(batch: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    return torch.meshgrid(
        torch.arange(batch, device=device),
        torch.arange(height, device=device),
        torch.arange(width, device=device),
        indexing="ij",
    )


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling with zeros."""
    n, _, height, width = x.shape
    shift_x, shift_y = int(height * ratio + 0.5), int(width * ratio + 0.5)
    translation_x = torch.randint(-shift_x, shift_x + 1, size=(n, 1, 1), device=x.device)
    translation_y = torch.randint(-shift_y, shift_y + 1, size=(n, 1, 1), device=x.device)
    grid_batch, grid_x, grid_y = _index_grids(n, height, width, x.device)
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, height + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, width + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of `ratio` times the image size per image, at a random position."""
    n, _, height, width = x.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    offset_x = torch.randint(0, height + (1 - cut_h % 2), size=(n, 1, 1), device=x.device)
    offset_y = torch.randint(0, width + (1 - cut_w % 2), size=(n, 1, 1), device=x.device)
    grid_batch, grid_x, grid_y = _index_grids(n, cut_h, cut_w, x.device)
    grid_x = torch.clamp(grid_x + offset_x - cut_h // 2, min=0, max=height - 1)
    grid_y = torch.clamp(grid_y + offset_y - cut_w // 2, min=0, max=width - 1)
    mask = torch.ones(n, height, width, dtype=x.dtype, device=x.device)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


AUGMENTATIONS = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}

# classes


class DiffAugment:
    """`DiffAugment(policy="color,translation,cutout")(images)`: augmented images, same shape.

    The policy is a comma-separated string or a list (`model.diffaugment=[color,cutout]` on the
    command line, where a bare comma would start a sweep).
    """

    def __init__(self, *, policy: str | Sequence[str]):
        names = policy.split(",") if isinstance(policy, str) else list(policy)
        self.policy = [name.strip() for name in names if name.strip()]
        unknown = [name for name in self.policy if name not in AUGMENTATIONS]
        if unknown or not self.policy:
            raise GanrunError(
                f"model.diffaugment={policy!r}: unknown policy {unknown or policy!r}; "
                f"use a comma-separated subset of {','.join(AUGMENTATIONS)}, or null for none"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.policy:
            for augmentation in AUGMENTATIONS[name]:
                x = augmentation(x)
        return x.contiguous()
