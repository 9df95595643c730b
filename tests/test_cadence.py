"""cadence.py: when the loop stops, evaluates and saves, as plain arithmetic on steps and seconds
(the loop's timing end to end, on a virtual clock, is tested in test_trainer.py)."""

import math

import pytest

from nextchar.cadence import Cadence
from nextchar.config import TrainConfig
from nextchar.errors import UserError


def test_the_stopping_point_is_the_nearer_of_steps_and_epochs():
    assert Cadence.plan(TrainConfig(steps=50, epochs=2.0), windows=12).total_steps == 24
    assert Cadence.plan(TrainConfig(steps=20, epochs=2.0), windows=12).total_steps == 20
    assert Cadence.plan(TrainConfig(epochs=0.01), windows=12).total_steps == 1  # never 0 steps
    with pytest.raises(UserError, match="give a stopping point"):
        Cadence.plan(TrainConfig(), windows=12)


def test_evaluations_by_steps_or_by_the_clock():
    by_steps = Cadence.plan(TrainConfig(steps=95), windows=12)  # a tenth of the run: every 9 steps
    assert by_steps.by_steps and by_steps.eval_every == 9
    assert [s for s in range(40) if by_steps.eval_by_steps(s)] == [9, 18, 27, 36]
    assert not by_steps.eval_by_clock(
        1e9, by_steps.eval_interval()
    )  # no budget: never by the clock
    timed = Cadence.plan(TrainConfig(steps=95, time=300.0), windows=12)
    assert not timed.by_steps and timed.eval_every == 0 and timed.eval_interval() == 30.0
    assert timed.eval_by_clock(30.0, 30.0) and not timed.eval_by_clock(29.9, 30.0)
    assert timed.next_eval_after(30.0, 95.0) == 120.0  # the next tenth still to come
    assert Cadence.plan(TrainConfig(time=60.0), windows=12).eval_interval() == 10.0  # 10 s at least
    assert Cadence.plan(TrainConfig(steps=95, eval_every=7), windows=12).eval_every == 7


def test_the_budget_keeps_back_time_for_the_last_evaluation_and_save():
    cadence = Cadence.plan(TrainConfig(time=100.0), windows=12)
    assert not cadence.time_up(99.9) and cadence.time_up(100.0)
    cadence.eval_cost, cadence.save_cost = 3.0, 1.0  # 8 s kept back: twice each
    assert cadence.reserve() == 8.0 and cadence.time_up(92.0) and not cadence.time_up(91.9)
    assert cadence.progress(0, 46.0) == pytest.approx(0.5)  # of the 92 s left to train in
    steps = Cadence.plan(TrainConfig(steps=40, time=100.0), windows=12)
    assert steps.progress(30, 10.0) == 0.75 and steps.steps_done(40) and not steps.steps_done(39)


def test_saves_between_evaluations():
    cadence = Cadence.plan(
        TrainConfig(steps=100, checkpoint_every=2.5, checkpoint_every_steps=7), windows=12
    )
    assert [s for s in range(30) if cadence.save_by_steps(s)] == [7, 14, 21, 28]
    assert cadence.save_by_clock(2.5) and not cadence.save_by_clock(2.4)
    never = Cadence.plan(TrainConfig(steps=100, checkpoint_every=0.0), windows=12)
    assert not never.save_by_clock(math.inf) and not any(never.save_by_steps(s) for s in range(30))
