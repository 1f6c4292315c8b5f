"""The VAE's encoder (Kingma & Welling 2014): image -> (mu, log-variance) of q(z | x).

The decoder is DCGAN's generator, unchanged (`ganrun.models.dcgan.Generator`), so a VAE and a
DCGAN run differ in how the same network is trained, not in the network.
"""

from __future__ import annotations

import torch

from ganrun.models.bigan import Encoder


class GaussianEncoder(Encoder):
    """image -> (mu, logvar), each (N, z_dim): a diagonal Gaussian posterior."""

    def __init__(self, *, z_dim: int = 100, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__(z_dim=z_dim, resolution=resolution, channels=channels, width=width, out_features=2 * z_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = super().forward(image).chunk(2, dim=1)
        return mu, logvar
