"""Collapse and divergence alarms: one console line and a W&B alert, never a silent run.

The checks read only the scalars the loop already logs (window means of loss terms, gradient
norms, D's accuracy on fakes, modes covered on toy data), so they work for every recipe and cost
nothing between log points. Each alarm fires once when its condition starts and re-arms when the
condition clears, so a long bad stretch is one message, not hundreds.

Hand-written: no library watches GAN training dynamics; the rules follow the failure signs that
Goodfellow's NIPS 2016 tutorial, Arjovsky & Bottou 2017 and the PacGAN/VEEGAN mode counts describe.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

from ganrun.config import AlarmSettings

# scalar names the loop logs
D_FAKE_ACCURACY = "stat/D_acc_fake"
MODES_COVERED = "modes/covered"
GRAD_NORM_PREFIX = "grad_norm/"
G_LOSS_PREFIX = "loss/G/"


@dataclass
class Alarms:
    HISTORY = 200  # log points of G loss kept for the median (checkpointed, so bounded)

    settings: AlarmSettings
    _streaks: dict[str, int] = field(default_factory=dict)
    _firing: set[str] = field(default_factory=set)
    _g_losses: list[float] = field(default_factory=list)
    _grad_peaks: dict[str, float] = field(default_factory=dict)
    _best_modes: Optional[float] = None

    def state_dict(self) -> dict:
        """What a resumed run needs to judge the next window the same way."""
        return {
            "streaks": dict(self._streaks),
            "firing": sorted(self._firing),
            "g_losses": list(self._g_losses),
            "grad_peaks": dict(self._grad_peaks),
            "best_modes": self._best_modes,
        }

    def load_state_dict(self, state: dict) -> None:
        self._streaks = dict(state.get("streaks", {}))
        self._firing = set(state.get("firing", []))
        self._g_losses = list(state.get("g_losses", []))
        self._grad_peaks = dict(state.get("grad_peaks", {}))
        self._best_modes = state.get("best_modes")

    def observe(self, step: int, scalars: dict[str, float]) -> list[str]:
        """The alarms that start at this log point, as one-line messages."""
        if not self.settings.enabled:
            return []
        conditions: dict[str, Optional[str]] = {}
        if D_FAKE_ACCURACY in scalars:
            accuracy = scalars[D_FAKE_ACCURACY]
            conditions["d_saturated"] = (
                f"D rejects {accuracy:.1%} of fakes: D is saturating and G's gradients are vanishing; "
                "try loss=hinge or loss=wgan_gp, instance noise, a lower optim.D.lr or DiffAugment"
                if accuracy >= self.settings.d_saturation else None
            )
        g_loss = sum(value for key, value in scalars.items() if key.startswith(G_LOSS_PREFIX))
        if any(key.startswith(G_LOSS_PREFIX) for key in scalars) and math.isfinite(g_loss):
            median = statistics.median(self._g_losses) if self._g_losses else None
            exploding = (median is not None and g_loss > self.settings.g_loss_floor
                         and g_loss > self.settings.g_loss_factor * max(abs(median), 1e-8))
            conditions["g_loss_exploding"] = (
                f"G loss {g_loss:.4g} is over {self.settings.g_loss_factor:g}x its median so far ({median:.4g}): "
                "training may be diverging; lower optim.G.lr or add a gradient penalty (loss.r1_gamma)"
                if exploding else None
            )
            self._g_losses = (self._g_losses + [g_loss])[-self.HISTORY:]
        for key, value in scalars.items():
            if key.startswith(GRAD_NORM_PREFIX) and math.isfinite(value):
                peak = max(self._grad_peaks.get(key, 0.0), value)
                self._grad_peaks[key] = peak
                name = key.removeprefix(GRAD_NORM_PREFIX)
                conditions[f"vanishing_{name}"] = (
                    f"{name}'s gradient norm {value:.3g} is below {self.settings.vanishing_ratio:g}x its peak "
                    f"({peak:.3g}): {name} has stopped learning"
                    if peak > 0 and value < self.settings.vanishing_ratio * peak else None
                )
        if MODES_COVERED in scalars:
            covered = scalars[MODES_COVERED]
            best = covered if self._best_modes is None else max(self._best_modes, covered)
            self._best_modes = best
            conditions["modes_dropped"] = (
                f"modes covered fell to {covered:g} from a best of {best:g}: mode collapse; "
                "try loss=wgan_gp, a lower optim.lr, or fewer D steps"
                if covered <= best - self.settings.modes_drop else None
            )
        return self._update(step, conditions)

    def _update(self, step: int, conditions: dict[str, Optional[str]]) -> list[str]:
        messages = []
        for name, message in conditions.items():
            if message is None:
                self._streaks[name] = 0
                self._firing.discard(name)
                continue
            # mode drops are counted at sample points, already far apart: no window needed
            needed = 1 if name == "modes_dropped" else self.settings.window
            self._streaks[name] = self._streaks.get(name, 0) + 1
            if self._streaks[name] >= needed and name not in self._firing:
                self._firing.add(name)
                messages.append(f"step {step}: {message}")
        return messages
