"""Ctrl-C and SIGTERM during training: recorded, not raised, so the loop stops at a step boundary
with a resume point (the loop reads `received` each step and all ranks agree on it).
"""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """While entered (in the main thread only), SIGINT and SIGTERM set `received` to the signal's
    number. A second Ctrl-C aborts at once (KeyboardInterrupt), except under torchrun, whose agent
    passes a Ctrl-C on to the workers that already had it from the terminal: they save first, as
    for one. On exit the previous handlers come back."""

    def __init__(self, distributed: bool):
        self.distributed = distributed
        self.received = 0
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT and not self.distributed:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}
