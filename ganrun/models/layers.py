"""Blocks shared by the model families: spectral norm, class-conditional BatchNorm, the
projection head, SAGAN self-attention and SNGAN's residual blocks.

Every block that may be conditional takes `labels` (int64 (N,)) in `forward` and ignores it
when built with `num_classes=0`, so one network definition serves both variants.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

# helpers


def maybe_spectral(layer: nn.Module, enabled: bool) -> nn.Module:
    """Spectral norm (Miyato et al. 2018) on `layer`'s weight, one power iteration per forward."""
    return spectral_norm(layer) if enabled else layer


def conv(in_channels: int, out_channels: int, kernel_size: int, *, gain: float = 1.0, spectral: bool) -> nn.Module:
    """A same-padding conv, Xavier-initialised as in the SNGAN code (gain sqrt(2) inside
    residual branches, 1 elsewhere); the init happens before spectral norm wraps the weight."""
    layer = nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2)
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return maybe_spectral(layer, spectral)


def linear(in_features: int, out_features: int, *, spectral: bool) -> nn.Module:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return maybe_spectral(layer, spectral)


# classes


class ClassBatchNorm2d(nn.Module):
    """BatchNorm2d; with `num_classes > 0` its gain and bias are looked up per class
    (conditional BatchNorm, de Vries et al. 2017, as in the SNGAN/SAGAN generators)."""

    def __init__(self, *, num_features: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(num_features, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gain.weight)  # start as the identity for every class
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.norm(x)
        if self.num_classes:
            x = x * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]
        return x


class ProjectionHead(nn.Module):
    """The discriminator's output: a linear real/fake logit, plus `<embed(y), h>` with a
    class embedding when conditional (projection discriminator, Miyato & Koyama 2018)."""

    def __init__(self, *, features: int, num_classes: int = 0, spectral: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.linear = linear(features, 1, spectral=spectral)
        if num_classes:
            embedding = nn.Embedding(num_classes, features)
            nn.init.xavier_uniform_(embedding.weight)
            self.embed = maybe_spectral(embedding, spectral)

    def forward(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = self.linear(features).flatten()
        if self.num_classes:
            logits = logits + (self.embed(labels) * features).sum(dim=1)
        return logits


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019), with BigGAN's 2x2 max-pooled keys and values.

    `x + gamma * attention(x)` with gamma starting at 0: the block is the identity at init
    and the network learns how much non-local evidence to use.
    """

    def __init__(self, *, channels: int, spectral: bool = True):
        super().__init__()
        key_channels, value_channels = max(1, channels // 8), max(1, channels // 2)
        self.query = conv(channels, key_channels, 1, spectral=spectral)
        self.key = conv(channels, key_channels, 1, spectral=spectral)
        self.value = conv(channels, value_channels, 1, spectral=spectral)
        self.out = conv(value_channels, channels, 1, spectral=spectral)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, _, height, width = x.shape
        pool = (lambda t: F.max_pool2d(t, 2)) if min(height, width) >= 2 else (lambda t: t)
        query = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, C/8)
        key = pool(self.key(x)).flatten(2).transpose(1, 2)  # (N, HW/4, C/8)
        value = pool(self.value(x)).flatten(2).transpose(1, 2)  # (N, HW/4, C/2)
        # SAGAN does not scale the logits by 1/sqrt(d): scale=1.
        attended = F.scaled_dot_product_attention(query, key, value, scale=1.0)
        attended = attended.transpose(1, 2).reshape(n, -1, height, width)
        return x + self.gamma * self.out(attended)


class GeneratorBlock(nn.Module):
    """SNGAN's up-sampling residual block: BN-ReLU-up-conv3-BN-ReLU-conv3, shortcut up-conv1."""

    def __init__(self, *, in_channels: int, out_channels: int, num_classes: int = 0, spectral: bool = False):
        super().__init__()
        self.norm1 = ClassBatchNorm2d(num_features=in_channels, num_classes=num_classes)
        self.conv1 = conv(in_channels, out_channels, 3, gain=math.sqrt(2), spectral=spectral)
        self.norm2 = ClassBatchNorm2d(num_features=out_channels, num_classes=num_classes)
        self.conv2 = conv(out_channels, out_channels, 3, gain=math.sqrt(2), spectral=spectral)
        self.shortcut = conv(in_channels, out_channels, 1, spectral=spectral)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, labels)), scale_factor=2)
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class DiscriminatorBlock(nn.Module):
    """SNGAN's discriminator residual block: ReLU-conv3-ReLU-conv3[-avgpool], with a 1x1
    shortcut when the shape changes. The first block (`first=True`, SNGAN's "optimized
    block") skips the leading ReLU, which would clip the input image."""

    def __init__(self, *, in_channels: int, out_channels: int, downsample: bool, first: bool = False, spectral: bool = True):
        super().__init__()
        self.downsample, self.first = downsample, first
        self.conv1 = conv(in_channels, out_channels, 3, gain=math.sqrt(2), spectral=spectral)
        self.conv2 = conv(out_channels, out_channels, 3, gain=math.sqrt(2), spectral=spectral)
        self.shortcut = (
            conv(in_channels, out_channels, 1, spectral=spectral) if first or downsample or in_channels != out_channels else None
        )

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        if self.shortcut is None:
            return h + x
        # pool before the 1x1 conv in the first block (cheaper, as in SNGAN), after it elsewhere
        shortcut = self.shortcut(self._pool(x)) if self.first else self._pool(self.shortcut(x))
        return h + shortcut
