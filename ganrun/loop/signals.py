"""Stop requests: SIGINT/SIGTERM ask for a checkpoint and a clean exit at the next step boundary."""

from __future__ import annotations

import signal
from typing import Optional

import torch

from ganrun.loop import distributed


class StopSignals:
    """SIGINT/SIGTERM ask for a checkpoint and a clean exit at the next step boundary; a second
    SIGINT stops at once."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handlers
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self) -> bool:
        flag = torch.tensor([1 if self.received is not None else 0])
        if torch.distributed.is_initialized():  # every rank must stop at the same step
            distributed.all_reduce(flag, op="max")
            if flag.item() and self.received is None:
                self.received = signal.SIGTERM
        return bool(flag.item())
