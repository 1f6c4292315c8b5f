"""Stop requests: SIGINT/SIGTERM ask for a checkpoint and a clean exit at the next step boundary.

Side work between steps (evaluation, sampling) can take minutes, far more than the 30 s a
scheduler (SLURM, Kubernetes) waits after SIGTERM before SIGKILL. So it polls `stop_pending()`
between its batches and raises `SideWorkInterrupted` (ganrun.errors); the loop then checkpoints
and stops. Signal handlers belong to the process, and so does the record of the `StopSignals`
that holds them (`StopSignals.active`): side work deep down asks it without being handed it.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import ClassVar, Iterator, Optional

import torch

from ganrun.errors import SideWorkInterrupted
from ganrun.loop import distributed

FORCED_EXIT = ("second Ctrl-C: stopped at once, without saving; files already written are whole, "
               "and a run resumes from its last checkpoint")


class StopSignals:
    """SIGINT/SIGTERM ask for a checkpoint and a clean exit at the next step boundary (side work
    stops between its batches, see `stop_pending`); a second SIGINT stops at once, without a
    checkpoint and without a traceback (exit code 130)."""

    # The instance whose handlers are installed, if any (signal handlers are process-wide).
    active: ClassVar[Optional["StopSignals"]] = None

    def __init__(self, *, forced_message: str = FORCED_EXIT) -> None:
        self.received: Optional[int] = None
        self.forced_message = forced_message
        self._previous: dict[int, object] = {}
        self._outer: Optional[StopSignals] = None

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handlers
                pass
        if self._previous:
            self._outer, StopSignals.active = StopSignals.active, self
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self.force_exit()
        self.received = signum

    def force_exit(self) -> None:
        """The user asked twice: leave now. Not an exception: one would unwind through W&B's
        finish and Hydra and end in a traceback. Nothing half-written survives: files are
        written to temp names and replaced (the next start sweeps the temps), and the kernel
        drops the run lock with the process."""
        try:
            sys.stdout.flush()
            print(f"\n{self.forced_message}", file=sys.stderr, flush=True)
        finally:
            os._exit(128 + signal.SIGINT)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous and StopSignals.active is self:
            StopSignals.active = self._outer

    def pending(self) -> bool:
        """This process received a stop signal: cheap (no collective), for polling between batches."""
        return self.received is not None

    def should_stop(self) -> bool:
        flag = torch.tensor([1 if self.received is not None else 0])
        if torch.distributed.is_initialized():  # every rank must stop at the same step
            distributed.all_reduce(flag, op="max")
            if flag.item() and self.received is None:
                self.received = signal.SIGTERM
        return bool(flag.item())


def stop_pending() -> bool:
    """Whether a stop signal is waiting (False when no `StopSignals` is active): the
    `should_abort` that side work polls between batches. Local to this process, no collective."""
    active = StopSignals.active
    return active is not None and active.pending()


def received_signal_name() -> str:
    """The name of the stop signal waiting ('SIGTERM'), for messages; 'a stop signal' if none."""
    active = StopSignals.active
    if active is None or active.received is None:
        return "a stop signal"
    return signal.Signals(active.received).name


@contextmanager
def stop_between_batches() -> Iterator[StopSignals]:
    """For `ganrun sample` and `ganrun eval`: SIGINT/SIGTERM stop the work between two batches
    (pass `signals.pending` down as `should_abort`), and the command ends with one line saying
    what was done and exit code 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    with StopSignals() as signals:
        try:
            yield signals
        except SideWorkInterrupted as stop:
            signum = signals.received or signal.SIGTERM
            print(f"stopped by {signal.Signals(signum).name}: {stop}", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum) from None
