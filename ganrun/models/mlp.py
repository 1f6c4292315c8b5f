"""Fully connected G and D: the original GAN's MNIST setup (Goodfellow et al. 2014; ReLU G,
dropout in D; maxout left out) and the small MLPs of the toy 2-D benchmarks (Unrolled GAN,
VEEGAN, PacGAN).

The output follows the dataset: images (`resolution > 0`: G ends in tanh and reshapes to
(N, channels, resolution, resolution); D flattens) or points (`resolution = 0`, the toy
datasets: `channels` is the number of coordinates, G's output is unbounded (N, channels)).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.models.layers import ProjectionHead

# helpers


def _data_shape(resolution: int, channels: int) -> tuple[int, ...]:
    if resolution < 0 or channels < 1:
        raise GanrunError(
            f"mlp needs dataset.resolution >= 0 (0 = 2-D points) and dataset.channels >= 1, got {resolution} and {channels}"
        )
    return (channels, resolution, resolution) if resolution else (channels,)


def _check_depth(hidden: int, layers: int) -> None:
    if hidden < 1 or layers < 1:
        raise GanrunError(f"mlp needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")


# classes


class Generator(nn.Module):
    """z (N, z_dim) [, labels (N,)] -> images in [-1, 1], or unbounded points (N, channels)."""

    def __init__(
        self,
        *,
        z_dim: int = 64,
        resolution: int = 28,
        channels: int = 1,
        hidden: int = 256,
        layers: int = 3,
        batch_norm: Optional[bool] = None,
        num_classes: int = 0,
    ):
        super().__init__()
        _check_depth(hidden, layers)
        self.data_shape = _data_shape(resolution, channels)
        if batch_norm is None:
            # Images: BatchNorm in G (as the common MLP-GAN MNIST code has it); without it this G
            # collapsed to one blob on MNIST within 4k steps while D saturated. Points: none, as
            # the toy benchmarks' MLPs, which cover the modes without it.
            batch_norm = bool(resolution)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None  # concatenated to z
        blocks: list[nn.Module] = []
        width = 2 * z_dim if num_classes else z_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), *([nn.BatchNorm1d(hidden)] if batch_norm else []), nn.ReLU()]
            width = hidden
        blocks.append(nn.Linear(width, int(torch.tensor(self.data_shape).prod())))
        if resolution:  # images live in [-1, 1]; toy points do not (ring radius 2, grid up to 4)
            blocks.append(nn.Tanh())
        self.main = nn.Sequential(*blocks)
        if self.embed is not None:
            # A quiet label code (as dcgan.Generator's, for the same reason): with nn.Embedding's
            # N(0, 1) G mapped each MNIST class to one image and ignored z.
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.main(z).view(z.shape[0], *self.data_shape)


class Discriminator(nn.Module):
    """images or points [, labels (N,)] -> one logit per sample (N,)."""

    def __init__(
        self,
        *,
        resolution: int = 28,
        channels: int = 1,
        hidden: int = 256,
        layers: int = 3,
        dropout: float = 0.0,
        num_classes: int = 0,
    ):
        super().__init__()
        _check_depth(hidden, layers)
        if not 0.0 <= dropout < 1.0:
            raise GanrunError(f"model.D.dropout must be in [0, 1), got {dropout}")
        width = int(torch.tensor(_data_shape(resolution, channels)).prod())
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU(0.2), *([nn.Dropout(dropout)] if dropout else [])]
            width = hidden
        self.main = nn.Sequential(*blocks)
        self.head = ProjectionHead(features=hidden, num_classes=num_classes, spectral=False)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(self.main(x.flatten(1)), labels)
