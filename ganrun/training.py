"""`ganrun train`: build the run (from its config, or its checkpoint on resume) and train it.
The loop and its parts live in ganrun/loop/ (setup.py builds, run.py loops)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ganrun.loop import distributed
from ganrun.loop.checkpoint import write_errors_as_one_line
from ganrun.loop.lock import RunLock, describe_sweep, sweep_stale_temp_files
from ganrun.loop.run import TrainResult
from ganrun.loop.setup import build_run


def train(cfg: DictConfig, *, run_dir: Path, overrides: list[str] = ()) -> TrainResult:
    """Train the run `cfg` describes into `run_dir`; `overrides` are the command line's, applied
    on top of a resumed checkpoint's config. Raises GanrunError / TrainingDiverged / RunInUse /
    OutputWriteError.

    Rank 0 holds RUN/.lock for the whole run (a second process on this run dir stops at once),
    sweeps the temp files that crashed saves left, and turns a failed write into the run (disk
    full, read-only) into one line with the last good step and the resume command."""
    if not distributed.DistributedContext.from_env().is_main:
        return build_run(cfg, run_dir=run_dir, overrides=list(overrides)).train()
    with RunLock(run_dir), write_errors_as_one_line(run_dir):
        removed, freed = sweep_stale_temp_files(run_dir)
        if removed:
            print(describe_sweep(run_dir, removed, freed))
        return build_run(cfg, run_dir=run_dir, overrides=list(overrides)).train()
