"""The learning-rate schedules against their closed forms."""

import math

import pytest

from nextchar.schedule import COOLDOWN, lr_factor


@pytest.mark.parametrize("progress", [0.0, 0.3, 0.79, 0.8, 0.85, 0.9, 1.0, 1.2])
def test_wsd_holds_the_rate_then_decays_linearly_over_the_last_fifth(progress):
    final = 0.05
    expected = 1.0 if progress <= 1 - COOLDOWN else 1 - (1 - final) * (min(progress, 1) - 0.8) / 0.2
    assert lr_factor(100, progress, 10, "wsd", final) == pytest.approx(expected)


@pytest.mark.parametrize("cooldown", [0.05, 0.4, 1.0])
def test_wsd_decays_over_the_cooldown_it_is_given(cooldown):
    final = 0.1
    for progress in (0.0, 0.5, 0.6, 0.7, 0.96, 1.0):
        expected = 1 - (1 - final) * max(0.0, progress - (1 - cooldown)) / cooldown
        assert lr_factor(100, progress, 10, "wsd", final, cooldown) == pytest.approx(expected)


def test_wsd_with_the_whole_run_as_cooldown_is_the_linear_schedule():
    assert lr_factor(100, 0.37, 10, "wsd", 0.1, 1.0) == pytest.approx(
        lr_factor(100, 0.37, 10, "linear", 0.1)
    )


def test_warmup_then_each_schedule():
    assert lr_factor(0, 0.0, 10, "wsd", 0.05) == pytest.approx(0.1)  # step 1 of 10 warming up
    assert lr_factor(4, 0.0, 10, "constant", 0.05) == pytest.approx(0.5)
    assert lr_factor(50, 0.5, 10, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(50, 0.5, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(50, 1.0, 10, "wsd", 0.05) == pytest.approx(0.05)
    assert lr_factor(50, 1.0, 0, "constant", 0.05) == 1.0
