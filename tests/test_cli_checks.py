"""Answers every input clearly: --json is always valid JSON, --resume refuses what it cannot honour,
and output paths are checked before the work."""

import json

import pytest

from nextchar.cli.commands import _finite
from processes import TINY_TEXT, TINY_TRAIN_FLAGS
from processes import cli_output as cli

TRAIN = [*TINY_TRAIN_FLAGS, "--quiet"]
TEXT = TINY_TEXT


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    (root / "t.txt").write_text(TEXT)
    assert cli("train", root / "t.txt", "--out", root / "run", *TRAIN)[0] == 0
    return root / "run"


def test_eval_json_of_text_with_nothing_to_score_is_a_clear_error(run, tmp_path):
    """It printed {"nats_per_char": NaN, ...} and exited 0."""
    (tmp_path / "snow.txt").write_text("☃☃☃")
    code, out, err = cli("eval", run, tmp_path / "snow.txt", "--json")
    assert (code, out) == (2, "") and "nothing to score" in err and "U+2603" in err
    code, out, _ = cli("eval", run, "--json")
    assert code == 0 and strict_json(out)["bits_per_char"] > 0


def test_json_never_holds_nan():
    assert _finite({"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": -float("inf")}}) == {
        "a": None,
        "b": [1.5, None],
        "c": {"d": None},
    }


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--hidden", "32"], "--hidden"),
        (["--val-frac", "0.2"], "--val-frac"),
        (["--seed", "7"], "--seed"),
        (["--cell", "gru", "--test-frac", "0.1"], "--cell, --test-frac"),
    ],
)
def test_resume_refuses_flags_it_cannot_honour(run, flags, named):
    code, _, err = cli("train", "--resume", run, *flags)
    assert code == 2 and f"cannot change {named} when resuming" in err


@pytest.mark.parametrize("command", ["plot", "report"])
def test_output_paths_are_checked_before_the_work(run, tmp_path, command):
    for out, says in [
        (tmp_path / "no" / "x.out", "does not exist"),
        (tmp_path, "is a folder"),
        ("", "is empty"),
    ]:
        code, _, err = cli(command, run, "--out", out)
        assert code == 2 and says in err and len(err.splitlines()) == 1, err
