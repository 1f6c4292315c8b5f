"""DCGAN generator and discriminator (Radford et al. 2016), resolution-adaptive.

64x64 is exactly the paper's (and pytorch/examples') network; other resolutions add or
remove stride-2 stages: 28 (MNIST) starts from 7x7, 32/64/128 from 4x4.

Conditional (`num_classes > 0`, Mirza & Osindero 2014): G sees a learned class embedding
concatenated to z; D adds a projection term `<embed(y), sum-pooled features>` to its logit
(Miyato & Koyama 2018).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ganrun.errors import GanrunError

# helpers

START_SIZE = {28: 7, 32: 4, 64: 4, 128: 4}


def _num_stages(resolution: int) -> int:
    """Stride-2 stages between the start size and the output size."""
    if resolution == 0:  # toy datasets (ring8, grid25) hold 2-D points, not images
        raise GanrunError(
            f"dcgan supports dataset.resolution in {sorted(START_SIZE)}, got 0: this dataset holds 2-D points, "
            "not images; use model=mlp"
        )
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
    """z (N, z_dim) [, labels (N,)] -> image (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, *, z_dim: int = 100, resolution: int = 64, channels: int = 3, width: int = 64, num_classes: int = 0):
        super().__init__()
        self.z_dim = z_dim
        # The label embedding is as wide as z, so 100 noise dims do not drown it.
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        input_dim = 2 * z_dim if num_classes else z_dim
        stages = _num_stages(resolution)
        start = START_SIZE[resolution]
        widths = [width * 2 ** (stages - 1 - i) for i in range(stages)]  # e.g. 512, 256, 128, 64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(input_dim, widths[0], start, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        init_dcgan_weights(self)
        if self.embed is not None:
            # DCGAN's N(0, 0.02), not nn.Embedding's N(0, 1): a label code as loud as z from the first
            # step lets G map each class to one image and ignore z (cgan_mnist collapsed within
            # every class by step 500; std across z 0.04, against 0.2 with a quiet code).
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.main(z.view(z.shape[0], -1, 1, 1))


class Discriminator(nn.Module):
    """image [, labels (N,)] -> one real/fake logit per image (N,). No sigmoid: losses work on logits."""

    def __init__(self, *, resolution: int = 64, channels: int = 3, width: int = 64, num_classes: int = 0):
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
        # Projection: the real/fake logit stays DCGAN's final conv; the class term is added to it.
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, image: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is None:
            return self.main(image).flatten()
        features = self.main[:-1](image)
        logits = self.main[-1](features).flatten()
        return logits + (self.embed(labels) * features.sum(dim=(2, 3))).sum(dim=1)
