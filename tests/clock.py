"""A virtual clock for the trainer: time passes only when a training window is read, a fixed
amount per step. Tests of what depends on time (--time, the evaluation and checkpoint cadence,
ranks stopping together) become exact, and hold however loaded the machine is."""

from __future__ import annotations

import time

import nextchar.data
import nextchar.trainer


class VirtualClock:
    """Stands in for the `time` module inside nextchar.trainer."""

    def __init__(self, seconds_per_step: float):
        self.now = 0.0
        self.seconds_per_step = seconds_per_step

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def install(seconds_per_step: float, monkeypatch=None) -> VirtualClock:
    """Give the trainer a clock that advances `seconds_per_step` per training window read
    (through `monkeypatch`, or for good in a child process that ends with the run)."""
    clock = VirtualClock(seconds_per_step)
    real_window = nextchar.data.Streams.window

    def window(self, index):
        clock.now += clock.seconds_per_step
        return real_window(self, index)

    set_attr = monkeypatch.setattr if monkeypatch is not None else setattr
    set_attr(nextchar.data.Streams, "window", window)
    set_attr(nextchar.trainer, "time", clock)
    return clock
