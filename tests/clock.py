"""A virtual clock for the trainer: time passes only when a training window is read, a fixed
amount per step. Tests of what depends on time (--time, the evaluation and checkpoint cadence,
ranks stopping together, autotune's timing) become exact, and hold however loaded the machine is."""

from __future__ import annotations

import time

import nextchar.data
import nextchar.trainer


class VirtualClock:
    """Stands in for the `time` module inside nextchar.trainer (or nextchar.autotune)."""

    def __init__(self, seconds_per_step: float = 0.0):
        self.now = 0.0
        self.seconds_per_step = seconds_per_step
        self.calls: dict[str, int] = {}

    def perf_counter(self) -> float:
        return self.now

    def candidate(self, name: str, *costs: float):
        """A function for autotune to time whose n-th call takes costs[n] seconds of this clock
        (the last cost from then on); `calls[name]` counts its calls."""

        def run():
            n = self.calls.get(name, 0)
            self.calls[name] = n + 1
            self.now += costs[min(n, len(costs) - 1)]

        return run

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
