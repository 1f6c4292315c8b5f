"""Exponential moving average of the generator, by half-life in images (stylegan2-ada)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, *, source: nn.Module, half_life_kimg: float, rampup: float | None, enabled: bool = True):
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self.half_life_kimg = half_life_kimg
        self.rampup = rampup
        self.enabled = enabled

    def decay(self, *, images_seen: int, batch_size: int) -> float:
        """Weight of the old average after one step of `batch_size` images (0 = plain copy)."""
        if not self.enabled:
            return 0.0
        half_life = self.half_life_kimg * 1000
        if self.rampup is not None:
            half_life = min(half_life, images_seen * self.rampup)
        return 0.5 ** (batch_size / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, source: nn.Module, *, images_seen: int, batch_size: int) -> None:
        beta = self.decay(images_seen=images_seen, batch_size=batch_size)
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in source.parameters()], 1.0 - beta)
        # Buffers (BatchNorm statistics) are copied, not averaged, as stylegan2 does: they are
        # already running averages, of the source network's activations.
        for ema_buffer, buffer in zip(self.module.buffers(), source.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
