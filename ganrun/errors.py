"""The one exception type a user should see: a message they can act on, never a traceback."""


class GanrunError(Exception):
    """Bad input or an unusable environment, with the value at fault and the fix in the message."""


class TrainingDiverged(GanrunError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class RunInUse(GanrunError):
    """Another process holds the run dir's lock (ganrun/loop/lock.py); nothing was touched."""


class OutputWriteError(GanrunError):
    """A write into the run failed (disk full, read-only); the last good checkpoint is kept.
    Exit code 1, like TrainingDiverged: the input was fine, the run stopped."""
