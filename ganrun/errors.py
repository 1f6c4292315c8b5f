"""The one exception type a user should see: a message they can act on, never a traceback."""


class GanrunError(Exception):
    """Bad input or an unusable environment, with the value at fault and the fix in the message."""


class TrainingDiverged(GanrunError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""
