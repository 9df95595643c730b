"""When the training loop stops, evaluates and saves: plain arithmetic on the step count and the
seconds the loop passes in (the loop owns the clock, so a virtual one in the tests decides the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainConfig
from .errors import UserError


@dataclass
class Cadence:
    """The stopping point of one run and the intervals of its evaluations and resume points.

    The run stops after `total_steps` (0: no limit) or once its `budget` seconds (0: none), less
    the reserve for the last evaluation and save, are spent. It evaluates every `eval_every`
    steps; with 0, by the clock, every tenth of the budget (10 s at least). Between evaluations,
    which also save, it saves every `save_every_s` seconds and `save_every_steps` steps (0: not)."""

    total_steps: int
    budget: float
    eval_every: int
    save_every_s: float
    save_every_steps: int
    eval_cost: float = 0.0  # seconds the last evaluation took
    save_cost: float = 0.0  # seconds the last resume point took to write

    @classmethod
    def plan(cls, train: TrainConfig, windows: int) -> Cadence:
        """From the training options and the windows in an epoch."""
        planned = [train.steps] if train.steps else []
        if train.epochs:
            planned.append(max(1, math.ceil(train.epochs * windows)))
        total = min(planned) if planned else 0
        if not total and not train.time:
            raise UserError("give a stopping point: --steps, --epochs or --time")
        eval_every = train.eval_every
        if not eval_every and total and not train.time:
            eval_every = max(1, total // 10)
        return cls(
            total, train.time, eval_every, train.checkpoint_every, train.checkpoint_every_steps
        )

    @property
    def by_steps(self) -> bool:
        """Whether only a step count ends the run (else the clock may)."""
        return bool(self.total_steps) and not self.budget

    def eval_interval(self) -> float:
        """Seconds between evaluations by the clock (inf without a budget)."""
        return max(10.0, self.budget / 10) if self.budget else math.inf

    def reserve(self) -> float:
        """Seconds kept back from the budget for the final evaluations and saves."""
        return 2.0 * self.eval_cost + 2.0 * self.save_cost

    def progress(self, step: int, elapsed: float) -> float:
        """The fraction of the run done: of its steps or of its budget, whichever is further."""
        fractions = []
        if self.total_steps:
            fractions.append(step / self.total_steps)
        if self.budget:
            fractions.append(elapsed / max(1e-9, self.budget - self.reserve()))
        return max(fractions)

    def time_up(self, elapsed: float) -> bool:
        return bool(self.budget) and elapsed + self.reserve() >= self.budget

    def steps_done(self, step: int) -> bool:
        return bool(self.total_steps) and step >= self.total_steps

    def eval_by_clock(self, elapsed: float, next_eval_time: float) -> bool:
        return not self.eval_every and elapsed >= next_eval_time

    def eval_by_steps(self, step: int) -> bool:
        return bool(self.eval_every) and step > 0 and step % self.eval_every == 0

    def save_by_clock(self, since_save: float) -> bool:
        return self.save_every_s > 0 and since_save >= self.save_every_s

    def save_by_steps(self, step: int) -> bool:
        return bool(self.save_every_steps) and step > 0 and step % self.save_every_steps == 0

    def next_eval_after(self, next_eval_time: float, elapsed: float) -> float:
        """The first evaluation time on the clock's grid that is still to come."""
        while next_eval_time <= elapsed:
            next_eval_time += self.eval_interval()
        return next_eval_time
