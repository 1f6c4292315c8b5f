"""The run's state as one object: what a checkpoint holds and what resume restores, in one place
(torchtitan's pattern: the payload and the resume path are the same code, not two lists)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ganrun import __version__
from ganrun.errors import GanrunError
from ganrun.loop import distributed
from ganrun.loop.alarms import Alarms
from ganrun.loop.checkpoint import FORMAT, capture_rng, restore_rng
from ganrun.loop.ema import EMA
from ganrun.recipes.base import Recipe


def seed_everything(seed: int) -> None:
    """`trainer.seed` for every global generator a run may draw from: torch (CPU and CUDA),
    numpy and Python's `random`, so two runs with one seed end in the same RNG states."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class Progress:
    """Loop counters, checkpointed as they are."""

    step: int = 0
    images_seen: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "images_seen": self.images_seen}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])


class RandomStates:
    """Every rank's torch/numpy/Python (and CUDA) generator states. `state_dict` is a collective
    under DDP (every rank must call it); `collective=False` keeps this rank's state only."""

    def __init__(self, *, rank: int):
        self.rank = rank

    def state_dict(self, *, collective: bool = True) -> list[dict]:
        return distributed.gather_objects(capture_rng()) if collective else [capture_rng()]

    def load_state_dict(self, states: list[dict]) -> None:
        # A checkpoint from fewer ranks (or best.pt, rank 0's only) gives every rank the first state.
        restore_rng(states[self.rank] if self.rank < len(states) else states[0])


class RunState:
    """Everything a run needs to continue exactly where it stopped: the config it was built from,
    the recipe (networks, optimizers, schedulers), G_ema, grad scalers, counters, the data
    stream's position, the fixed grid inputs, alarms, the evaluator's best-so-far, the tracker's
    run id and every RNG. `state_dict()` is the checkpoint payload; `load_state_dict()` resumes."""

    def __init__(self, *, config: dict, recipe: Recipe, ema: EMA, scalers: dict[str, torch.amp.GradScaler],
                 progress: Progress, batches: Any, grid: dict[str, torch.Tensor], alarms: Alarms,
                 evaluator: Optional[Any], rng: RandomStates, run_id: Optional[str] = None):
        self.config = config
        self.recipe = recipe
        self.ema = ema
        self.scalers = scalers
        self.progress = progress
        self.batches = batches
        self.grid = grid
        self.alarms = alarms
        self.evaluator = evaluator
        self.rng = rng
        self.run_id = run_id

    def state_dict(self, *, collective: bool = True) -> dict:
        return {
            "format": FORMAT,
            "ganrun_version": __version__,
            "config": self.config,
            "recipe": self.recipe.state_dict(),
            "G_ema": self.ema.state_dict(),
            "scalers": {name: scaler.state_dict() for name, scaler in self.scalers.items()},
            "progress": self.progress.state_dict(),
            "data": self.batches.state_dict(),
            "grid": self.grid,
            "rng": self.rng.state_dict(collective=collective),
            "tracker": {"run_id": self.run_id, "alarms": self.alarms.state_dict()},
            "eval": self.evaluator.state_dict() if self.evaluator is not None else {},
        }

    def load_state_dict(self, payload: dict, *, source: str = "the checkpoint") -> None:
        """Restore from a checkpoint payload. What the config sets stays as built for this run
        (the config, the grid, loss, EMA and alarm settings, the optimizers' hyperparameters:
        `Recipe.load_state_dict`); what training accumulated comes from the checkpoint."""
        try:
            self.recipe.load_state_dict(payload["recipe"], step=int(payload["progress"]["step"]))
            self.ema.load_state_dict(payload["G_ema"])
        except (RuntimeError, KeyError) as error:
            raise GanrunError(
                f"{source} does not fit this model ({str(error).splitlines()[0]}); "
                "resume with the model config it was trained with"
            ) from None
        for name, scaler in self.scalers.items():
            saved = payload["scalers"].get(name) or {}
            if saved:  # empty: saved by a precision without loss scaling; a scaler this one needs starts fresh
                scaler.load_state_dict(saved)
        self.progress.load_state_dict(payload["progress"])
        self.batches.load_state_dict(payload["data"])
        self.rng.load_state_dict(payload["rng"])
        self.run_id = payload["tracker"].get("run_id")
        self.alarms.load_state_dict(payload["tracker"].get("alarms", {}))
        if self.evaluator is not None:
            self.evaluator.load_state_dict(payload.get("eval", {}))
