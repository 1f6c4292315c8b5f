"""Checkpoints: one file rebuilds the run. Written atomically, read with weights_only=True.

Layout of RUN/checkpoints/: `last.pt` (always the newest) and `step_NNNNNNN.pt` (the newest
`keep_last` of them). A checkpoint is a plain dict of tensors and Python scalars/containers:

    format, ganrun_version, config (resolved), recipe {networks, optimizers, schedulers},
    G_ema, scalers, progress {step, images_seen}, data {epoch, position}, grid, rng [per rank],
    tracker {run_id}
"""

from __future__ import annotations

import os
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ganrun.errors import GanrunError
from ganrun.files import atomic_save, fsync_dir

FORMAT = "ganrun-checkpoint/1"
LAST = "last.pt"
NUMBERED = re.compile(r"^step_(\d{7,})\.pt$")

# writing


def _link_or_copy_atomic(source: Path, target: Path) -> None:
    """Make `target` a second name for `source` (no extra disk), atomically."""
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:  # filesystems without hard links
        import shutil

        shutil.copyfile(source, temp)
    os.replace(temp, target)
    fsync_dir(target.parent)


def step_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def write_checkpoint(payload: dict, checkpoint_dir: Path, *, step: int, keep_last: int) -> Path:
    """Save `step_N.pt` (when keep_last > 0) and `last.pt`; prune old numbered files."""
    last = checkpoint_dir / LAST
    if keep_last > 0:
        numbered = checkpoint_dir / step_name(step)
        atomic_save(payload, numbered)
        _link_or_copy_atomic(numbered, last)
        for old in numbered_checkpoints(checkpoint_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    else:
        atomic_save(payload, last)
    return last


def numbered_checkpoints(checkpoint_dir: Path) -> list[Path]:
    found = [p for p in checkpoint_dir.glob("step_*.pt") if NUMBERED.match(p.name)]
    return sorted(found, key=lambda p: int(NUMBERED.match(p.name).group(1)))


# reading


def resolve_checkpoint_path(path_or_run: str | os.PathLike) -> Path:
    """A .pt file as is; a run dir -> RUN/checkpoints/last.pt."""
    path = Path(path_or_run).expanduser()
    if not path.exists():
        raise GanrunError(f"checkpoint or run dir '{path}' does not exist; pass a run dir (outputs/DATE/TIME) or a .pt file")
    if path.is_dir():
        candidate = path / "checkpoints" / LAST
        if not candidate.is_file():
            candidate = path / LAST
        if not candidate.is_file():
            raise GanrunError(f"'{path}' holds no checkpoints/{LAST}; pass a ganrun run dir or a .pt file")
        return candidate
    return path


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run dir a checkpoint belongs to (RUN/checkpoints/x.pt -> RUN)."""
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_checkpoint(path: Path) -> dict:
    """Load and check a ganrun checkpoint, with a clear error for anything else."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        hint = "it is truncated or corrupt" if _looks_truncated(path) else "it is not a ganrun checkpoint"
        raise GanrunError(f"cannot read checkpoint '{path}': {hint} ({reason}); use an earlier step_*.pt of that run") from None
    except Exception as error:  # weights_only unpickler refusals come as pickle.UnpicklingError
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GanrunError(f"'{path}' is not a ganrun checkpoint ({first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GanrunError(f"'{path}' is not a ganrun checkpoint (no '{FORMAT}' format tag)")
    if isinstance(payload.get("config"), dict):
        payload["config"] = upgrade_config(payload["config"])
    return payload


# configs saved by earlier versions

# Modules that configs named in `_target_` before the package layout of 0.1 (ganrun/data/, ...).
MOVED_MODULES = {"ganrun.toy": "ganrun.data", "ganrun.sr": "ganrun.data"}
# Tasks by recipe, for configs saved before `task` existed (every recipe then belonged to one).
TASK_OF_RECIPE_MODULE = {"ganrun.recipes.sr": "super_resolution"}
TASK_TARGETS = {
    "generation": "ganrun.tasks.generation.GenerationTask",
    "super_resolution": "ganrun.tasks.super_resolution.SuperResolutionTask",
}


def upgrade_config(config: dict) -> dict:
    """A saved config in today's terms: moved `_target_` modules renamed, and the task added
    when the checkpoint predates tasks, so old checkpoints still resume, sample and evaluate."""

    def rename(node: object) -> object:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and "." in target:
                module, name = target.rsplit(".", 1)
                node["_target_"] = f"{MOVED_MODULES.get(module, module)}.{name}"
            for value in node.values():
                rename(value)
        return node

    rename(config)
    if "task" not in config:
        recipe_module = str(config.get("model", {}).get("_target_", "")).rsplit(".", 1)[0]
        name = TASK_OF_RECIPE_MODULE.get(recipe_module, "generation")
        config["task"] = {"_target_": TASK_TARGETS[name], "name": name}
    return config


def _looks_truncated(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"  # a zip (torch.save) that cannot be read whole
    except OSError:
        return False


# random number generators


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state: tuple) -> dict:
    # weights_only loading accepts tensors and plain containers, not numpy arrays.
    name, keys, position, has_gauss, cached_gaussian = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _numpy_state_from_plain(state: dict) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"])
