"""One process per run dir: an OS file lock on RUN/.lock, and the sweep of temp files that
crashed saves left behind.

The lock is `fcntl.flock` on an open file, so the kernel drops it when the process ends, however
it ends: a `kill -9` never leaves a stale lock to clean up by hand. The file itself stays (it
records the last holder: PID, host, start time); deleting it on exit would let a process that
opened the old file and one that created a new file both hold "the" lock.

flock belongs to an open file description, which a forked child shares: a DataLoader worker
would keep the run locked after a `kill -9` of its parent, until it noticed and exited. So every
forked child closes its copy at once (os.register_at_fork); the lock lives exactly as long as
the process that took it. Exec'd children (W&B's service) never inherit it (PEP 446).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ganrun.errors import GanrunError, RunInUse

LOCK_NAME = ".lock"
# `.NAME.tmp-PID`: the per-process temp names of ganrun.files.atomic_save / atomic_write_text
# and checkpoint._link_or_copy_atomic.
TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")


# descriptors of locks this process holds; a forked child closes its copies (see above)
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # only this copy: the parent keeps the lock (no LOCK_UN, which would drop it)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)

# helpers


def _describe_holder(lock_path: Path) -> str:
    """'PID 1234 on host h (started 2026-01-02 10:00:00)', from what the holder wrote.

    The holder writes its record just after taking the lock, so a reader that lost the race by
    microseconds may see an empty file: read again for up to a second before giving up."""
    for _ in range(20):
        try:
            record = json.loads(lock_path.read_text())
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"]))
            return f"PID {record['pid']} on host {record['host']} (started {started})"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "another process (it has not recorded its PID yet)"


def _in_use(run_dir: Path, lock_path: Path) -> RunInUse:
    return RunInUse(f"run dir {run_dir} is in use by {_describe_holder(lock_path)}; wait for it to end or stop it")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


# classes


class RunLock:
    """`with RunLock(run_dir):` holds RUN/.lock exclusively, or raises RunInUse at once."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise GanrunError(f"cannot lock run dir {self.run_dir}: cannot open {self.path} "
                              f"({error.strerror or error}); make {self.run_dir} writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(self.run_dir, self.path) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            # Some network/FUSE filesystems have no flock: run unlocked rather than not at all.
            print(f"warning: cannot lock {self.path} ({error.strerror}); a second process on this run dir "
                  "would not be stopped", file=sys.stderr)
            return
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        _HELD.add(fd)

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def sweep_stale_temp_files(run_dir: Path) -> tuple[int, int]:
    """Remove `.NAME.tmp-PID` files in RUN and RUN/checkpoints left by saves that died mid-write.

    Call it holding the run's lock. A temp file is stale when its PID is gone, or is our own PID
    (we have written nothing yet, so it is a dead process's whose PID was reused). A live other
    PID is kept: it may be `ganrun eval` writing eval.json into this run right now.
    Returns (files removed, bytes freed)."""
    removed, freed = 0, 0
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = TEMP_NAME.match(path.name)
            if not match or not path.is_file():
                continue
            pid = int(match.group(1))
            if pid != os.getpid() and pid_alive(pid):
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:  # gone already, or not ours to remove: leave it
                continue
            removed, freed = removed + 1, freed + size
    return removed, freed


def describe_sweep(run_dir: Path, removed: int, freed: int) -> str:
    size = f"{freed / 2**20:.1f} MiB" if freed >= 2**20 else f"{freed / 2**10:.1f} KiB"
    files = "file" if removed == 1 else "files"
    return f"removed {removed} temp {files} of interrupted saves from {run_dir} ({size} freed)"


def check_free(run_dir: Path) -> None:
    """Raise RunInUse when another process holds the run's lock; takes it only for an instant
    and writes nothing. For a check before anything is written (the CLI's preflight, which
    runs before Hydra writes .hydra/); `RunLock` around the run stays the real guard."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: never locked
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(Path(run_dir), path) from None
    except OSError:  # no flock on this filesystem: RunLock will say so
        return
    finally:
        os.close(fd)
