"""Loss bookkeeping between log points, without a host sync per step."""

from __future__ import annotations

from typing import Optional

import torch

from ganrun.errors import TrainingDiverged
from ganrun.loop import distributed


def scalar_key(name: str) -> str:
    """Loss terms are logged as loss/NET/term; statistics and gradient norms under their own names."""
    return name if name.startswith(("stat/", "grad_norm/")) else f"loss/{name}"


class LossMonitor:
    """Averages loss terms between log points and remembers the first non-finite one.

    Everything stays on the device; the host syncs only at log and checkpoint boundaries.
    `precision` (the run's, e.g. "bf16") only shapes the advice of the divergence message.
    """

    NEVER = 2**62

    def __init__(self, *, precision: str = "fp32") -> None:
        self.precision = precision
        self.names: list[str] = []
        self.sums: Optional[torch.Tensor] = None
        self.first_bad: Optional[torch.Tensor] = None
        self.count = 0

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([value.float() for value in terms.values()])
        if self.sums is None:
            self.names = list(terms)
            self.sums = torch.zeros_like(values)
            self.first_bad = torch.full(values.shape, self.NEVER, dtype=torch.long, device=values.device)
        finite = torch.isfinite(values)
        self.sums += torch.where(finite, values, torch.zeros_like(values))
        self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=step))
        self.count += 1

    def raise_if_nonfinite(self, *, last_checkpoint_step: Optional[int] = None) -> None:
        """Raise TrainingDiverged naming the first non-finite term (a collective under DDP).
        `last_checkpoint_step`: the step of the newest checkpoint on disk (None: none yet)."""
        if self.first_bad is None:
            return
        first_bad = distributed.all_reduce(self.first_bad.clone(), op="min")
        step = int(first_bad.min())
        if step < self.NEVER:
            term = self.names[int(first_bad.argmin())]
            kept = (f"the checkpoint of step {last_checkpoint_step} is kept" if last_checkpoint_step is not None
                    else "no checkpoint was written yet")
            advice = "Lower optim.lr" + (f", or try trainer.precision=fp32 (this run used {self.precision})"
                                         if self.precision != "fp32" else "")
            raise TrainingDiverged(f"loss/{term} became non-finite at step {step}; training stopped, {kept}. {advice}")

    def flush(self) -> dict[str, float]:
        if self.sums is None or self.count == 0:
            return {}
        means = distributed.all_reduce(self.sums.clone()) / (self.count * distributed.world_size())
        self.sums.zero_()
        self.count = 0
        return {scalar_key(name): float(value) for name, value in zip(self.names, means.tolist())}
