"""The one exception type a user should see: a message they can act on, never a traceback."""

from __future__ import annotations

from typing import Callable, Optional

# A stop check that side work polls between batches (ganrun.loop.signals.stop_pending): true
# when a stop signal is waiting; the work then raises SideWorkInterrupted (`check_abort`).
ShouldAbort = Callable[[], bool]


class GanrunError(Exception):
    """Bad input or an unusable environment, with the value at fault and the fix in the message."""


class TrainingDiverged(GanrunError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class RunInUse(GanrunError):
    """Another process holds the run dir's lock (ganrun/loop/lock.py); nothing was touched."""


class OutputWriteError(GanrunError):
    """A write into the run failed (disk full, read-only); the last good checkpoint is kept.
    Exit code 1, like TrainingDiverged: the input was fine, the run stopped."""


class SideWorkInterrupted(Exception):
    """A stop signal (SIGINT/SIGTERM) arrived while side work ran (an evaluation, a sample
    folder, reference features): raised between batches by the work's `should_abort()` check,
    so the caller can drop the partial result, checkpoint and stop within seconds. Not a
    GanrunError: nothing was wrong with the input."""


def check_abort(should_abort: Optional[ShouldAbort], what: str) -> None:
    """Between two batches of side work: raise SideWorkInterrupted (naming `what`) when a stop
    signal is waiting. A Python call and a flag read: cheap enough for every batch."""
    if should_abort is not None and should_abort():
        raise SideWorkInterrupted(f"{what} interrupted")
