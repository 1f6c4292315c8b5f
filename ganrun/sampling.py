"""`ganrun sample`: what a checkpoint draws, from the checkpoint alone. The run's task (named in
its config) decides: grids, latent walks, class rows and reconstructions for generation; a folder
of inputs -> a folder of outputs for image-to-image tasks (super-resolution)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from ganrun.config import choice
from ganrun.errors import GanrunError
from ganrun.hardware import choose_device
from ganrun.loop.checkpoint import load_checkpoint, resolve_checkpoint_path
from ganrun.loop.rebuild import task_of
from ganrun.loop.signals import stop_between_batches


@torch.no_grad()
def sample(cfg: DictConfig) -> list[Path]:
    """Returns what was written (a picture, or the folder of single images). Raises GanrunError on
    bad settings or checkpoints; SIGINT/SIGTERM stop it between batches (SystemExit 128 + signal)."""
    if cfg.n < 1:
        raise GanrunError(f"n must be >= 1, got {cfg.n}")
    if cfg.interpolation_steps < 2:
        raise GanrunError(f"interpolation_steps must be >= 2, got {cfg.interpolation_steps}")
    path = resolve_checkpoint_path(cfg.ckpt)
    device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available(), key="device")
    task = task_of(load_checkpoint(path)["config"])
    with stop_between_batches() as signals:
        return task.sample(cfg, path=path, device=device, should_abort=signals.pending)
