"""SAGAN (Zhang et al. 2019): SNGAN's ResNet nets with spectral norm in G as well as D and
a self-attention block where the feature maps are `attention_resolution` pixels wide (the
paper's best: 32). The block sits after the G / D block whose output side is nearest to it,
so on 32x32 images D, whose first block already halves the size, attends at 16x16.
"""

from __future__ import annotations

from ganrun.models import sngan


class Generator(sngan.Generator):
    def __init__(
        self,
        *,
        z_dim: int = 128,
        resolution: int = 64,
        channels: int = 3,
        width: int = 64,
        num_classes: int = 0,
        attention_resolution: int = 32,
    ):
        super().__init__(
            z_dim=z_dim,
            resolution=resolution,
            channels=channels,
            width=width,
            num_classes=num_classes,
            spectral=True,
            attention_resolution=attention_resolution,
        )


class Discriminator(sngan.Discriminator):
    def __init__(
        self, *, resolution: int = 64, channels: int = 3, width: int = 64, num_classes: int = 0, attention_resolution: int = 32
    ):
        super().__init__(
            resolution=resolution, channels=channels, width=width, num_classes=num_classes, attention_resolution=attention_resolution
        )
