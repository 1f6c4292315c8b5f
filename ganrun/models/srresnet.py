"""SRResNet generator and SRGAN's VGG-style discriminator (Ledig et al. 2017, "Photo-Realistic
Single Image Super-Resolution Using a Generative Adversarial Network", fig. 4).

G maps LR images in [-1, 1] to HR images in [-1, 1] (unbounded output: clamped when rendered):
9x9 conv + PReLU, `blocks` residual blocks (conv-[BN]-PReLU-conv-[BN]), a conv(-BN) with the
long skip, pixel-shuffle upsampling (x2 stages for 2 and 4, one x3 stage for 3), 9x9 conv.
Departures, both switchable: BatchNorm off by default (`batch_norm=false`, as EDSR and BasicSR's
MSRResNet: better PSNR, no train/eval mismatch on small crops), and a global skip that adds the
bicubic upscaling of the input to the output (MSRResNet adds a bilinear one) with the last conv
zero-initialized, so an untrained G is exactly bicubic and learns only the residual detail.
"""

from __future__ import annotations

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.imaging import bicubic_upscale, check_scale

# helpers

UPSAMPLE_STAGES = {2: [2], 3: [3], 4: [2, 2]}


def reject_classes(num_classes: int) -> None:
    if num_classes:
        raise GanrunError(f"super-resolution models are unconditional, got num_classes={num_classes}; drop conditional=true")


# classes


class ResidualBlock(nn.Module):
    def __init__(self, *, width: int, batch_norm: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(width)) if batch_norm else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), norm(), nn.PReLU(width),
            nn.Conv2d(width, width, 3, padding=1), norm(),
        )
        # Small residual branches at init keep a deep stack without BN stable (BasicSR's 0.1 scale).
        with torch.no_grad():
            for layer in self.body:
                if isinstance(layer, nn.Conv2d):
                    layer.weight.mul_(0.1)
                    layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    def __init__(
        self,
        *,
        scale: int = 4,
        channels: int = 3,
        width: int = 64,
        blocks: int = 16,
        batch_norm: bool = False,
        global_skip: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        reject_classes(num_classes)
        check_scale(scale, "model.scale")
        if blocks < 1 or width < 1:
            raise GanrunError(f"model.G.blocks and model.G.width must be >= 1, got {blocks} and {width}")
        self.scale, self.global_skip = scale, global_skip
        self.head = nn.Sequential(nn.Conv2d(channels, width, 9, padding=4), nn.PReLU(width))
        self.body = nn.Sequential(
            *[ResidualBlock(width=width, batch_norm=batch_norm) for _ in range(blocks)],
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width) if batch_norm else nn.Identity(),
        )
        upsample = []
        for factor in UPSAMPLE_STAGES[scale]:
            upsample += [nn.Conv2d(width, width * factor**2, 3, padding=1), nn.PixelShuffle(factor), nn.PReLU(width)]
        self.upsample = nn.Sequential(*upsample)
        self.tail = nn.Conv2d(width, channels, 9, padding=4)
        if global_skip:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        sr = self.tail(self.upsample(features + self.body(features)))
        return sr + bicubic_upscale(lr, self.scale).to(sr.dtype) if self.global_skip else sr


class VGGStyleDiscriminator(nn.Module):
    """SRGAN's D: eight 3x3 convs (64 to 512 channels, stride 2 every second one) with BN and
    LeakyReLU(0.2), then dense 1024, LeakyReLU, dense 1. Returns logits (N,). `resolution` is
    the HR crop size (dataset.hr_patch), a multiple of 16."""

    def __init__(self, *, resolution: int = 96, channels: int = 3, width: int = 64, num_classes: int = 0):
        super().__init__()
        reject_classes(num_classes)
        if resolution % 16:
            raise GanrunError(f"the SRGAN discriminator needs dataset.hr_patch divisible by 16, got {resolution}; e.g. 96 or 128")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        widths = [width, width, 2 * width, 2 * width, 4 * width, 4 * width, 8 * width, 8 * width]
        for index in range(1, len(widths)):
            stride = 2 if index % 2 else 1
            layers += [
                nn.Conv2d(widths[index - 1], widths[index], 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(widths[index]),
                nn.LeakyReLU(0.2),
            ]
        self.features = nn.Sequential(*layers)
        side = resolution // 16
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * side * side, 1024), nn.LeakyReLU(0.2),
                                  nn.Linear(1024, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)).squeeze(1)
