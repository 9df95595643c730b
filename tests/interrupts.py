"""A real SIGINT that the test process sends itself when training reads a chosen window, so that
a test knows exactly where an interrupted run stops."""

import os
import signal

import nextchar.data

WINDOW = nextchar.data.Streams.window  # the real one, to put back


def interrupt_at(monkeypatch, stop_at: int) -> None:
    """SIGINT on the `stop_at`-th window read from now on (1-based)."""
    calls = [0]

    def interrupting_window(self, index):
        calls[0] += 1
        if calls[0] == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return WINDOW(self, index)

    monkeypatch.setattr(nextchar.data.Streams, "window", interrupting_window)
