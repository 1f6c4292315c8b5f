"""DCGAN generator and discriminator (Radford et al. 2016), resolution-adaptive.

64x64 is exactly the paper's (and pytorch/examples') network; other resolutions add or
remove stride-2 stages: 28 (MNIST) starts from 7x7, 32/64/128 from 4x4.
"""

from __future__ import annotations

import torch
from torch import nn

from ganrun.errors import GanrunError

# helpers

START_SIZE = {28: 7, 32: 4, 64: 4, 128: 4}


def _num_stages(resolution: int) -> int:
    """Stride-2 stages between the start size and the output size."""
    if resolution not in START_SIZE:
        raise GanrunError(
            f"dcgan supports dataset.resolution in {sorted(START_SIZE)}, got {resolution}; "
            "set dataset.resolution to one of them"
        )
    stages = 0
    size = START_SIZE[resolution]
    while size < resolution:
        size *= 2
        stages += 1
    return stages


def init_dcgan_weights(module: nn.Module) -> None:
    """Conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), shifts 0 (paper, sec. 4)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


# classes


class Generator(nn.Module):
    """z (N, z_dim) -> image (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, *, z_dim: int = 100, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        self.z_dim = z_dim
        stages = _num_stages(resolution)
        start = START_SIZE[resolution]
        widths = [width * 2 ** (stages - 1 - i) for i in range(stages)]  # e.g. 512, 256, 128, 64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, widths[0], start, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], self.z_dim, 1, 1))


class Discriminator(nn.Module):
    """image -> one real/fake logit per image (N,). No sigmoid: losses work on logits."""

    def __init__(self, *, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        stages = _num_stages(resolution)
        start = START_SIZE[resolution]
        widths = [width * 2**i for i in range(stages)]  # e.g. 64, 128, 256, 512
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, start, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.main(image).flatten()
