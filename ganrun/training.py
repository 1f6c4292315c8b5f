"""`ganrun train`: build the run (from its config, or its checkpoint on resume) and train it.
The loop and its parts live in ganrun/loop/ (setup.py builds, run.py loops)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ganrun.loop.run import TrainResult
from ganrun.loop.setup import build_run


def train(cfg: DictConfig, *, run_dir: Path, overrides: list[str] = ()) -> TrainResult:
    """Train the run `cfg` describes into `run_dir`; `overrides` are the command line's, applied
    on top of a resumed checkpoint's config. Raises GanrunError / TrainingDiverged."""
    return build_run(cfg, run_dir=run_dir, overrides=list(overrides)).train()
