"""DCGAN generator and discriminator (Radford et al. 2016), resolution-adaptive.

64x64 is exactly the paper's (and pytorch/examples') network; other resolutions add or
remove stride-2 stages: 28 (MNIST) starts from 7x7, 32/64/128 from 4x4.

`hidden > 0` adds one fully connected layer of that many units where the conv stacks meet z and the
logit, the layout of InfoGAN's MNIST networks (Chen et al. 2016, appendix C.1: G z -> FC 1024 -> FC
7x7x128 -> deconv 64 -> deconv 1; D conv 64 -> conv 128 -> FC 1024 -> FC 1), which Lucic et al.
2018 ("Are GANs Created Equal?") used for their MNIST study. 0 (the default) is the DCGAN paper's
all-convolutional network, which drops such layers.

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
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


# classes


class Generator(nn.Module):
    """z (N, z_dim) [, labels (N,)] -> image (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, *, z_dim: int = 100, resolution: int = 64, channels: int = 3, width: int = 64, num_classes: int = 0,
                 hidden: int = 0):
        super().__init__()
        if hidden < 0:
            raise GanrunError(f"model.G.hidden must be >= 0 (0 = no fully connected layer), got {hidden}")
        self.z_dim = z_dim
        self.hidden = hidden
        # The label embedding is as wide as z, so 100 noise dims do not drown it.
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        input_dim = 2 * z_dim if num_classes else z_dim
        stages = _num_stages(resolution)
        start = START_SIZE[resolution]
        widths = [width * 2 ** (stages - 1 - i) for i in range(stages)]  # e.g. 512, 256, 128, 64
        if hidden:  # InfoGAN's z -> FC hidden -> FC start x start x widths[0], BatchNorm and ReLU after each
            layers: list[nn.Module] = [
                nn.Linear(input_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True),
                nn.Linear(hidden, widths[0] * start * start, bias=False), nn.BatchNorm1d(widths[0] * start * start),
                nn.ReLU(True), nn.Unflatten(1, (widths[0], start, start)),
            ]
        else:  # DCGAN's projection of z: a transposed conv from 1x1 to start x start
            layers = [nn.ConvTranspose2d(input_dim, widths[0], start, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
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
        return self.main(z.flatten(1) if self.hidden else z.view(z.shape[0], -1, 1, 1))


class Discriminator(nn.Module):
    """image [, labels (N,)] -> one real/fake logit per image (N,). No sigmoid: losses work on logits."""

    def __init__(self, *, resolution: int = 64, channels: int = 3, width: int = 64, num_classes: int = 0, hidden: int = 0):
        super().__init__()
        if hidden < 0:
            raise GanrunError(f"model.D.hidden must be >= 0 (0 = no fully connected layer), got {hidden}")
        stages = _num_stages(resolution)
        start = START_SIZE[resolution]
        widths = [width * 2**i for i in range(stages)]  # e.g. 64, 128, 256, 512
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, True)]
        if hidden:  # InfoGAN's FC hidden (BatchNorm, LeakyReLU) -> FC 1
            layers += [nn.Flatten(), nn.Linear(widths[-1] * start * start, hidden, bias=False), nn.BatchNorm1d(hidden),
                       nn.LeakyReLU(0.2, True), nn.Linear(hidden, 1)]
        else:  # DCGAN's final conv over the whole start x start map
            layers += [nn.Conv2d(widths[-1], 1, start, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)
        init_dcgan_weights(self)
        # Projection: the real/fake logit stays the last layer's; the class term is added to it.
        self.embed = nn.Embedding(num_classes, hidden or widths[-1]) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, image: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is None:
            return self.main(image).flatten()
        features = self.main[:-1](image)
        logits = self.main[-1](features).flatten()
        pooled = features if features.dim() == 2 else features.sum(dim=(2, 3))  # (N, hidden) or sum-pooled maps
        return logits + (self.embed(labels) * pooled).sum(dim=1)
