"""Checkpoints: one file rebuilds the run. Written atomically, read with weights_only=True.

Layout of RUN/checkpoints/: `last.pt` (always the newest) and `step_NNNNNNN.pt` (the newest
`keep_last` of them). A checkpoint is a plain dict of tensors and Python scalars/containers:

    format, ganrun_version, config (resolved), recipe {networks, optimizers, schedulers},
    G_ema, scalers, progress {step, images_seen}, data {epoch, position}, grid, rng [per rank],
    tracker {run_id}, checksum {sha256}

`checksum` is a SHA-256 over everything else in the file (every tensor's bytes, every value),
walked in a fixed order; `load_checkpoint` recomputes it, so flipped bytes inside tensor data
(which torch.load itself does not notice) fail loudly. Files from before it have no checksum
and load unverified.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import zipfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ganrun.errors import GanrunError, OutputWriteError
from ganrun.files import atomic_save, fsync_dir

FORMAT = "ganrun-checkpoint/1"
LAST = "last.pt"
NUMBERED = re.compile(r"^step_(\d{7,})\.pt$")
CHECKSUM = "checksum"

# writing


def _link_or_copy_atomic(source: Path, target: Path) -> None:
    """Make `target` a second name for `source` (no extra disk), atomically.

    A hard link, not a copy: a copy would double the disk and write time of every save, and
    protect only against damage to one of two files. The previous numbered file is the real
    fallback (keep_last >= 2), and load_checkpoint names it when `last.pt` is damaged, saying
    that the newest step file is the same file."""
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        temp.unlink(missing_ok=True)
        try:
            os.link(source, temp)
        except OSError as error:  # filesystems without hard links
            if error.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
                raise
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    finally:
        with suppress(OSError):  # a failed link or copy leaves no temp file behind
            temp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def step_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def write_checkpoint(payload: dict, checkpoint_dir: Path, *, step: int, keep_last: int) -> Path:
    """Save `step_N.pt` (when keep_last > 0) and `last.pt`; prune old numbered files."""
    last = checkpoint_dir / LAST
    payload = with_checksum(payload)
    if keep_last > 0:
        numbered = checkpoint_dir / step_name(step)
        atomic_save(payload, numbered)
        _link_or_copy_atomic(numbered, last)
        for old in numbered_checkpoints(checkpoint_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    else:
        atomic_save(payload, last)
    return last


def save_checkpoint_file(payload: dict, path: Path) -> None:
    """One checkpoint file outside the last/step_N rotation (best.pt), with its checksum."""
    atomic_save(with_checksum(payload), path)


def with_checksum(payload: dict) -> dict:
    return {**{key: value for key, value in payload.items() if key != CHECKSUM},
            CHECKSUM: {"sha256": payload_digest(payload)}}


def payload_digest(payload: dict) -> str:
    """SHA-256 of a checkpoint's contents (all but the checksum itself), the same before
    torch.save and after torch.load(weights_only=True)."""
    hasher = hashlib.sha256()
    _digest_into(hasher, "", {key: value for key, value in payload.items() if key != CHECKSUM})
    return hasher.hexdigest()


def _digest_into(hasher, path: str, value: object) -> None:
    # Each record names its place in the tree, so moved or renamed values change the digest too.
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        data = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
        hasher.update(f"T{path}|{tensor.dtype}|{tuple(tensor.shape)}|{data.numel()}\n".encode())
        hasher.update(data.numpy().data)
    elif isinstance(value, dict):
        hasher.update(f"D{path}|{len(value)}\n".encode())
        # sorted, not insertion order: the digest must not depend on how a dict was built
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _digest_into(hasher, f"{path}/{key!r}", value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(f"S{path}|{type(value).__name__}|{len(value)}\n".encode())
        for index, item in enumerate(value):
            _digest_into(hasher, f"{path}[{index}]", item)
    else:
        hasher.update(f"V{path}|{type(value).__name__}|{value!r}\n".encode())


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


class _Damaged(Exception):
    """A file that was a checkpoint once: truncated, or its bytes no longer match its checksum."""


def load_checkpoint(path: Path) -> dict:
    """Load and check a ganrun checkpoint, with a clear error for anything else.

    A damaged file (truncated, or failing its checksum) gets a message that names the newest
    numbered checkpoint beside it that still verifies."""
    try:
        return _load_verified(path)
    except _Damaged as damage:
        raise GanrunError(f"{damage}; {_fallback_advice(Path(path))}") from None


def _load_verified(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if _looks_truncated(path):
            raise _Damaged(f"cannot read checkpoint '{path}': it is truncated or corrupt ({reason})") from None
        raise GanrunError(f"cannot read checkpoint '{path}': it is not a ganrun checkpoint ({reason})") from None
    except Exception as error:  # weights_only unpickler refusals come as pickle.UnpicklingError
        reason = _unpickler_reason(error)
        if _looks_truncated(path) and "Unsupported global" not in reason:  # a torch.save zip with a garbled pickle
            raise _Damaged(f"cannot read checkpoint '{path}': it is truncated or corrupt ({reason})") from None
        raise GanrunError(f"'{path}' is not a ganrun checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GanrunError(f"'{path}' is not a ganrun checkpoint (no '{FORMAT}' format tag)")
    stored = payload.get(CHECKSUM)
    if stored is not None:  # checkpoints written before checksums load unverified
        stored_digest = stored.get("sha256") if isinstance(stored, dict) else None
        if stored_digest != payload_digest(payload):
            raise _Damaged(f"checkpoint '{path}' is corrupt: its contents do not match the SHA-256 stored in it")
    if isinstance(payload.get("config"), dict):
        payload["config"] = upgrade_config(payload["config"])
    return payload


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's weights_only refusal that says what was refused. Its other lines
    suggest weights_only=False, which runs whatever code the file holds: never repeat that."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.split(". Please use", 1)[0].removesuffix(".")
    safe = [line for line in lines if "weights_only" not in line and "trust" not in line]
    return safe[0] if safe else type(error).__name__


def _fallback_advice(damaged: Path) -> str:
    """Which step_*.pt beside a damaged file to use instead: the newest that verifies."""
    folder = damaged.parent
    twins = [other.name for other in [folder / LAST, *numbered_checkpoints(folder)]
             if other.name != damaged.name and _same_file(other, damaged)]
    note = (f"{' and '.join(twins)} {'is' if len(twins) == 1 else 'are'} the same file ({LAST} is a hard link to "
            "the newest step file), so damaged too; ") if twins else ""
    for candidate in reversed(numbered_checkpoints(folder)):
        if _same_file(candidate, damaged):
            continue
        try:
            _load_verified(candidate)
        except (_Damaged, GanrunError):
            continue
        return f"{note}the newest step file that verifies is {candidate}: use it instead (ganrun train resume={candidate})"
    return f"{note}no earlier step_*.pt in {folder} verifies; start a new run"



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
            # a zip (torch.save) that cannot be read whole, or nothing at all (a crash before the data hit the disk)
            return handle.read(4) in (b"PK\x03\x04", b"")
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
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


# failed writes

# errno -> what the user can do about it. The first four only ever come from writing; the
# others count only for paths inside the run (a dataset folder's EACCES is not a failed write).
_WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space or raise your disk quota",
    errno.EFBIG: "free space on that disk or use a filesystem that takes larger files",
    errno.EROFS: "make {folder} writable again",
    errno.EACCES: "make {folder} writable again",
    errno.EPERM: "make {folder} writable again",
    errno.EIO: "check that disk",
}
_ONLY_INSIDE_THE_RUN = (errno.EACCES, errno.EPERM, errno.EIO)


@contextmanager
def write_errors_as_one_line(run_dir: Path) -> Iterator[None]:
    """A write into the run that fails (disk full, read-only run dir) becomes one line: the path,
    the cause, the last good checkpoint and the command that continues from it."""
    try:
        yield
    except OSError as error:
        message = describe_write_failure(error, Path(run_dir))
        if message is None:
            raise
        raise OutputWriteError(message) from None


def describe_write_failure(error: OSError, run_dir: Path) -> Optional[str]:
    """The one-line message for a failed write into `run_dir`, or None when `error` is not one."""
    if error.errno not in _WRITE_FIXES:
        return None
    path = Path(os.fsdecode(error.filename)) if error.filename is not None else None
    inside = path is None or _is_inside(path, run_dir)
    if error.errno in _ONLY_INSIDE_THE_RUN and not inside:
        return None
    where = str(path) if path is not None else f"to {run_dir}"
    cause = error.strerror or os.strerror(error.errno)
    fix = _WRITE_FIXES[error.errno].format(folder=run_dir if inside else path.parent)
    good = last_good_checkpoint(run_dir / "checkpoints")
    if good is None:
        return f"cannot write {where} ({cause}); no checkpoint of this run was saved yet; {fix} and start the run again"
    step, good_path = good
    resume = run_dir if good_path.name == LAST else good_path
    return (f"cannot write {where} ({cause}); the last good checkpoint is step {step} ({good_path}); "
            f"{fix}, then continue with: ganrun train resume={resume}")


def last_good_checkpoint(checkpoint_dir: Path) -> Optional[tuple[int, Path]]:
    """(step, path) of the newest checkpoint in the folder that loads and verifies."""
    if not checkpoint_dir.is_dir():
        return None
    for path in [checkpoint_dir / LAST, *reversed(numbered_checkpoints(checkpoint_dir))]:
        if not path.is_file():
            continue
        try:
            return int(_load_verified(path)["progress"]["step"]), path
        except (_Damaged, GanrunError, KeyError, TypeError):
            continue
    return None


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.absolute().relative_to(folder.absolute())
        return True
    except ValueError:
        return False
