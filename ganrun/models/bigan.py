"""BiGAN networks (Donahue et al. 2017; ALI, Dumoulin et al. 2017): an encoder E and a joint
discriminator D(x, z). The generator is DCGAN's (`ganrun.models.dcgan.Generator`).

Both new networks reuse the DCGAN discriminator's strided-conv stack, so they follow the
dataset's resolution (28, 32, 64, 128) exactly as DCGAN does.
"""

from __future__ import annotations

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.models.dcgan import Discriminator, init_dcgan_weights

# helpers


def dcgan_features(*, resolution: int, channels: int, width: int) -> tuple[nn.Sequential, nn.Conv2d]:
    """DCGAN's discriminator without its last layer (image -> (N, C, k, k) features), and that
    last layer, whose shape tells a new head how wide and large the features are."""
    layers = Discriminator(resolution=resolution, channels=channels, width=width).main
    return layers[:-1], layers[-1]


def reject_labels(num_classes: int, family: str) -> None:
    if num_classes:
        raise GanrunError(f"model={family} is unconditional, got num_classes={num_classes}; drop conditional=true")


# classes


class Encoder(nn.Module):
    """image -> latent (N, out_features), deterministic: DCGAN's D stack with a z-sized head.

    out_features defaults to z_dim (BiGAN's E); the VAE's encoder asks for 2 * z_dim (mu, log-variance).
    """

    def __init__(
        self, *, z_dim: int = 100, resolution: int = 64, channels: int = 3, width: int = 64, out_features: int = 0
    ):
        super().__init__()
        self.features, last = dcgan_features(resolution=resolution, channels=channels, width=width)
        self.head = nn.Conv2d(last.in_channels, out_features or z_dim, last.kernel_size)
        init_dcgan_weights(self.features)
        # The head keeps PyTorch's default init: codes then start near the prior's unit scale.
        # DCGAN's N(0, 0.02) would start them ~100x smaller, an easy tell for BiGAN's D.

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image)).flatten(start_dim=1)


class JointDiscriminator(nn.Module):
    """(image, latent) -> one logit per pair (N,).

    Conv features of x and an MLP embedding of z, concatenated and mixed by an MLP: the
    BiGAN/ALI discriminator, which sees x and z jointly (it is E and G together that it must
    tell apart, not images alone).
    """

    def __init__(
        self,
        *,
        z_dim: int = 100,
        resolution: int = 64,
        channels: int = 3,
        width: int = 64,
        hidden: int = 512,
        num_classes: int = 0,
    ):
        super().__init__()
        reject_labels(num_classes, "bigan")
        features, last = dcgan_features(resolution=resolution, channels=channels, width=width)
        self.image_features = nn.Sequential(
            features, nn.Conv2d(last.in_channels, hidden, last.kernel_size), nn.LeakyReLU(0.2, True), nn.Flatten()
        )
        self.latent_features = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2, True), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, True)
        )
        self.joint = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.2, True), nn.Linear(hidden, 1))
        init_dcgan_weights(self)

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([self.image_features(image), self.latent_features(latent)], dim=1)
        return self.joint(pair).flatten()
