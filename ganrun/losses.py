"""GAN losses. A loss holds hyperparameters, never networks: the recipe passes D in.

Every method returns a dict of named terms; the loop sums them, scales them for AMP,
backpropagates and reports each one (`loss/D/real`, `loss/G/adv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganrun.errors import GanrunError


class NonSaturatingLoss:
    """The standard GAN loss on logits; G maximizes log D(G(z)) (Goodfellow et al. 2014, sec. 3)."""

    def __init__(self, *, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise GanrunError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.real_target = 1.0 - label_smoothing

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        real_logits = D(real)
        fake_logits = D(fake)
        real_term = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, self.real_target))
        return {"real": real_term, "fake": F.softplus(fake_logits).mean()}

    def g_loss(self, D: nn.Module, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"adv": F.softplus(-D(fake)).mean()}
