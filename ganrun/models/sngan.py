"""SNGAN's ResNet generator and discriminator (Miyato et al. 2018, appendix B.4), for 28,
32, 64 and 128 pixels; the building blocks live in `layers.py`.

32x32 is the paper's CIFAR-10 network (G: 256 channels throughout, D: 128) at `width=64`;
64 and 128 follow mimicry's SNGAN 64 (channels halving from 16x width in G, doubling up to
16x width in D). 28 (MNIST) starts from 7x7. D has spectral norm on every conv and linear;
G uses BatchNorm (class-conditional when `num_classes > 0`), and D ends in a projection head.

`spectral_G` and `attention_resolution` turn these nets into SAGAN's (see `sagan.py`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ganrun.errors import GanrunError
from ganrun.models.layers import (
    ClassBatchNorm2d,
    DiscriminatorBlock,
    GeneratorBlock,
    ProjectionHead,
    SelfAttention,
    conv,
    linear,
)

# helpers

# resolution -> (G's start size, G's channels per stage as multiples of width)
G_STAGES = {28: (7, (4, 4, 4)), 32: (4, (4, 4, 4, 4)), 64: (4, (16, 8, 4, 2, 1)), 128: (4, (16, 16, 8, 4, 2, 1))}
# resolution -> D's blocks as (channels as multiples of width, downsample)
D_STAGES = {
    28: ((2, True), (2, True), (2, False)),
    32: ((2, True), (2, True), (2, False), (2, False)),
    64: ((1, True), (2, True), (4, True), (8, True), (16, True)),
    128: ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False)),
}


def _check_resolution(resolution: int, family: str) -> None:
    if resolution not in G_STAGES:
        raise GanrunError(
            f"{family} supports dataset.resolution in {sorted(G_STAGES)}, got {resolution}; "
            "set dataset.resolution to one of them (toy 2-D data needs model=mlp)"
        )


def attention_index(sides: list[int], attention_resolution: int) -> Optional[int]:
    """Which block's output gets self-attention: the one whose feature-map side is nearest to
    `attention_resolution` (ties: the larger map). None when attention is off (0)."""
    if attention_resolution == 0:
        return None
    if attention_resolution < 0:
        raise GanrunError(f"model.attention_resolution must be >= 0 (0 = none), got {attention_resolution}")
    return min(range(len(sides)), key=lambda i: (abs(sides[i] - attention_resolution), -sides[i]))


def _apply(blocks: nn.ModuleList, x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    for block in blocks:
        x = block(x, labels)
    return x


# classes


class Generator(nn.Module):
    """z (N, z_dim) [, labels (N,)] -> image (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(
        self,
        *,
        z_dim: int = 128,
        resolution: int = 32,
        channels: int = 3,
        width: int = 64,
        num_classes: int = 0,
        spectral: bool = False,
        attention_resolution: int = 0,
    ):
        super().__init__()
        _check_resolution(resolution, "sngan/sagan")
        start, multiples = G_STAGES[resolution]
        widths = [width * m for m in multiples]
        self.start, self.first_width = start, widths[0]
        self.input = linear(z_dim, start * start * widths[0], spectral=spectral)
        self.blocks = nn.ModuleList()
        sides = [start * 2 ** (i + 1) for i in range(len(widths) - 1)]
        attend_after = attention_index(sides, attention_resolution)
        for index, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            self.blocks.append(GeneratorBlock(in_channels=w_in, out_channels=w_out, num_classes=num_classes, spectral=spectral))
            if index == attend_after:
                self.blocks.append(SelfAttention(channels=w_out, spectral=spectral))
        self.output_norm = ClassBatchNorm2d(num_features=widths[-1])
        self.output = conv(widths[-1], channels, 3, spectral=spectral)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.input(z).view(z.shape[0], self.first_width, self.start, self.start)
        x = _apply(self.blocks, x, labels)
        return torch.tanh(self.output(F.relu(self.output_norm(x))))


class Discriminator(nn.Module):
    """image [, labels (N,)] -> one logit per image (N,); spectral norm on every layer."""

    def __init__(
        self,
        *,
        resolution: int = 32,
        channels: int = 3,
        width: int = 64,
        num_classes: int = 0,
        attention_resolution: int = 0,
    ):
        super().__init__()
        _check_resolution(resolution, "sngan/sagan")
        stages = D_STAGES[resolution]
        sides, side = [], resolution
        for _, downsample in stages:
            side = side // 2 if downsample else side
            sides.append(side)
        attend_after = attention_index(sides, attention_resolution)
        self.blocks = nn.ModuleList()
        in_channels = channels
        for index, (multiple, downsample) in enumerate(stages):
            out_channels = width * multiple
            self.blocks.append(
                DiscriminatorBlock(in_channels=in_channels, out_channels=out_channels, downsample=downsample, first=index == 0)
            )
            if index == attend_after:
                self.blocks.append(SelfAttention(channels=out_channels))
            in_channels = out_channels
        self.head = ProjectionHead(features=in_channels, num_classes=num_classes)

    def forward(self, image: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        features = F.relu(_apply(self.blocks, image, labels)).sum(dim=(2, 3))  # global sum pooling
        return self.head(features, labels)
