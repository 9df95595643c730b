"""What the training loop reports between two log lines: the log window (the mean training loss
and the speed since the last line) and the progress bar that shows them on a terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TextIO

import torch

from . import distributed
from .guard import Ok


class LogWindow:
    """Sums over the steps since the last log line. The loss stays on `device` (no host sync per
    step); `close` reads it, summed over every rank."""

    def __init__(self, device: torch.device | str, now: float):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)  # nats of the steps taken
        self.valid = 0  # their targets on this rank (a tensor on the device once it counts there)
        self.chars = 0  # every step's targets, over all ranks: the speed
        self.started = now

    def add(self, loss_sum: torch.Tensor, ok: Ok, local_valid: int, valid: int) -> None:
        """One step: its summed loss on this rank, `ok` (see guard.py), its targets here and in all."""
        if ok is True:  # the host knows the step was taken (the CPU: it has read `ok` anyway)
            self.loss += float(loss_sum.detach())
            self.valid += local_valid
        elif ok is not False:  # only the device knows: add there, with no host sync
            self.loss += torch.where(ok, loss_sum.detach().double(), 0.0)
            self.valid += ok.long() * local_valid
        self.chars += valid

    def close(
        self, dist: distributed.Dist, clock: Callable[[], float]
    ) -> tuple[float, float, float]:
        """-> (mean training loss in nats/char, chars/s, now), and a new window from now."""
        total_loss = dist.sum(float(self.loss))
        total_valid = dist.sum(float(self.valid))
        now = clock()
        speed = self.chars / max(1e-9, now - self.started)
        self.loss.zero_()
        self.valid, self.chars, self.started = 0, 0, now
        return total_loss / max(1.0, total_valid), speed, now


class ProgressBar:
    """tqdm's bar on `log` when it is a terminal (or NEXTCHAR_PROGRESS=1): steps for a run that
    only a step count ends, seconds of the budget otherwise. Without a bar, `say` prints and the
    rest does nothing."""

    def __init__(self, log: TextIO, show: bool, by_steps: bool, total: float, initial: float):
        self.log, self.by_steps, self.total, self.bar = log, by_steps, total, None
        forced = os.environ.get("NEXTCHAR_PROGRESS") == "1"  # a bar even when log is no terminal
        if not show or not (log.isatty() or forced):
            return
        from tqdm import tqdm

        if by_steps:
            self.bar = tqdm(
                total=int(total),
                initial=int(initial),
                file=log,
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )
        else:
            self.bar = tqdm(
                total=int(total),
                initial=int(initial),
                file=log,
                unit="s",
                dynamic_ncols=True,
                leave=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]",
            )

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.log)
        else:
            print(text, file=self.log, flush=True)

    def show(self, step: int, loss: float, speed: float, best_val: float | None) -> None:
        if self.bar is None:
            return
        postfix = {"step": step, "loss": f"{loss:.3f}", "chars/s": f"{speed:,.0f}"}
        if best_val is not None:
            postfix["val"] = f"{best_val:.3f}"
        self.bar.set_postfix(postfix, refresh=False)

    def advance(self, elapsed: float) -> None:
        """After a step: one more step, or the seconds of the budget spent so far."""
        if self.bar is None:
            return
        if self.by_steps:
            self.bar.update(1)
        else:
            self.bar.update(min(int(elapsed), int(self.total)) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
