"""CycleGAN's networks (Zhu et al. 2017, "Unpaired Image-to-Image Translation using
Cycle-Consistent Adversarial Networks", appendix 7.2; junyanz/pytorch-CycleGAN-and-pix2pix
models/networks.py ResnetGenerator): the ResNet generator (Johnson et al. 2016's), the pair of
generators G_AB, G_BA and the pair of PatchGAN discriminators D_A, D_B.

Images are float (N, C, H, W) in [-1, 1]. Initialization as the reference's
init_weights("normal", 0.02) (ganrun.models.pix2pix.init_normal).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.models.pix2pix import PatchDiscriminator, check_norm, init_normal, norm_layer

# helpers

DIRECTIONS = ("AtoB", "BtoA")
DOMAINS = ("A", "B")


def blocks_for(resolution: int) -> int:
    """The paper's rule (appendix 7.2): 6 residual blocks for 128x128 training images, 9 for
    256x256 and higher (the reference's resnet_6blocks / resnet_9blocks)."""
    return 9 if resolution >= 256 else 6


# classes


class ResidualBlock(nn.Module):
    """x + [reflect-pad 1, conv 3x3, norm, ReLU, (dropout), reflect-pad 1, conv 3x3, norm](x)."""

    def __init__(self, *, width: int, norm: str, dropout: float):
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm_layer(norm, width),
                                   nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm_layer(norm, width)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-w, d2w, d4w, `blocks` x R4w, u2w, uw, c7s1-out (the paper's notation): reflection
    padding, a 7x7 stem, two stride-2 3x3 convs down, residual blocks, two stride-2 transposed
    convs up (output_padding 1), a 7x7 conv and tanh. Instance norm by default (norm: batch,
    instance or none); no dropout (the reference's cycle_gan model sets --no_dropout).

    blocks: residual blocks; null = from `resolution` (6 below 256 px, 9 from 256 px on).
    Input (N, in_channels, H, W) in [-1, 1], H and W multiples of `size_multiple` = 4 and at
    least `min_size` = 8 (reflection padding needs 2 pixels at the 1/4 scale); output
    (N, out_channels, H, W) in (-1, 1).
    """

    size_multiple = 4
    min_size = 8

    def __init__(
        self,
        *,
        resolution: int = 256,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 64,
        blocks: Optional[int] = None,
        norm: str = "instance",
        dropout: float = 0.0,
    ):
        super().__init__()
        check_norm(norm, "model.G.norm")
        blocks = blocks_for(resolution) if blocks is None else blocks
        if blocks < 0 or width < 1:
            raise GanrunError(f"model.G.blocks must be >= 0 and model.G.width >= 1, got {blocks} and {width}; the paper uses 6 or 9 and 64")
        if not 0.0 <= dropout < 1.0:
            raise GanrunError(f"model.G.dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.blocks = in_channels, out_channels, blocks
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7, bias=bias),
                                   norm_layer(norm, width), nn.ReLU()]
        for factor in (1, 2):
            layers += [nn.Conv2d(width * factor, width * factor * 2, 3, stride=2, padding=1, bias=bias),
                       norm_layer(norm, width * factor * 2), nn.ReLU()]
        layers += [ResidualBlock(width=4 * width, norm=norm, dropout=dropout) for _ in range(blocks)]
        for factor in (4, 2):
            layers += [nn.ConvTranspose2d(width * factor, width * factor // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       norm_layer(norm, width * factor // 2), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class CycleGenerators(nn.Module):
    """G_AB (domain A -> B) and G_BA (B -> A) as one module: networks["G"] of the CycleGAN recipe,
    so one optimizer trains both (the reference's Adam over chain(G_A, G_B)) and the loop's EMA
    of networks["G"] averages both. `forward(images, direction=)` runs one of them; going
    through forward keeps DDP and torch.compile wrappers of the whole module working.
    Every argument but the channels is passed to both ResnetGenerators.
    """

    def __init__(
        self,
        *,
        resolution: int = 256,
        channels_A: int = 3,
        channels_B: int = 3,
        width: int = 64,
        blocks: Optional[int] = None,
        norm: str = "instance",
        dropout: float = 0.0,
    ):
        super().__init__()
        shared = {"resolution": resolution, "width": width, "blocks": blocks, "norm": norm, "dropout": dropout}
        self.G_AB = ResnetGenerator(in_channels=channels_A, out_channels=channels_B, **shared)
        self.G_BA = ResnetGenerator(in_channels=channels_B, out_channels=channels_A, **shared)
        self.channels_A, self.channels_B = channels_A, channels_B
        self.size_multiple, self.min_size = ResnetGenerator.size_multiple, ResnetGenerator.min_size

    def forward(self, images: torch.Tensor, *, direction: str = "AtoB") -> torch.Tensor:
        if direction == "AtoB":
            return self.G_AB(images)
        if direction == "BtoA":
            return self.G_BA(images)
        raise GanrunError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")


class CycleDiscriminators(nn.Module):
    """D_A (real A vs G_BA's outputs) and D_B (real B vs G_AB's outputs), two PatchGANs of the
    same settings (ganrun.models.pix2pix.PatchDiscriminator, the reference's basic D: n_layers 3,
    instance norm). networks["D"] of the recipe: one optimizer for both, as the reference's.
    Note the reference's names differ: its netD_A judges domain B (G_A's outputs), netD_B domain A.
    `forward(images, domain=)` -> logits (N, 1, H', W') of that domain's D.
    """

    def __init__(
        self,
        *,
        channels_A: int = 3,
        channels_B: int = 3,
        width: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        spectral: bool = False,
    ):
        super().__init__()
        shared = {"width": width, "n_layers": n_layers, "norm": norm, "spectral": spectral}
        self.D_A = PatchDiscriminator(channels=channels_A, **shared)
        self.D_B = PatchDiscriminator(channels=channels_B, **shared)

    def forward(self, images: torch.Tensor, *, domain: str) -> torch.Tensor:
        if domain == "A":
            return self.D_A(images)
        if domain == "B":
            return self.D_B(images)
        raise GanrunError(f"domain must be one of {list(DOMAINS)}, got {domain!r}")
