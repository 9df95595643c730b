"""Exact resume: on the CPU with the same thread count, a run interrupted and resumed ends with
weights bit-identical to the same run uninterrupted. Data position, optimizer, schedule, RNG
states, the carried hidden state and the weight average all come back from latest.safetensors;
dropout exercises the RNG, and the streams wrap around an epoch boundary (the hidden state is
reset there).

The interruption is a real SIGINT that the process sends itself when it reads a chosen window,
so the test knows exactly where it lands."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import nextchar
import nextchar.data
from interrupts import interrupt_at
from nextchar.checkpoint import load_checkpoint
from nextchar.errors import Interrupted, UserError
from nextchar.runfolder import RunFolder

LINE = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
TEXT = "".join(f"{i}: {LINE}" for i in range(90))
# about 20 windows per epoch, so 40 steps cross an epoch boundary
OPTIONS = {
    "hidden": 32,
    "layers": 2,
    "embed": 16,
    "dropout": 0.2,
    "batch_size": 8,
    "seq_len": 32,
    "lr": 1e-2,
    "warmup_steps": 5,
    "sample_chars": 20,
    "log_every": 5,
    "steps": 40,
}
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()] + ["--quiet"]

INTERRUPT_AT = textwrap.dedent("""
    import os, signal, sys
    import nextchar.data
    from nextchar.cli import main

    stop_at, calls, window = int(sys.argv[1]), [0], nextchar.data.Streams.window

    def interrupting_window(self, index):
        calls[0] += 1
        if calls[0] == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return window(self, index)

    nextchar.data.Streams.window = interrupting_window
    main(sys.argv[2:])
""")


def all_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_checkpoint(path)


def assert_identical_runs(a: Path, b: Path) -> None:
    """Every tensor of best and latest (weights, optimizer, hidden state, RNG, average) bit for bit."""
    for name in ("best.safetensors", "latest.safetensors"):
        (ta, ma), (tb, mb) = all_tensors(a / name), all_tensors(b / name)
        assert ta.keys() == tb.keys(), name
        assert any(k.startswith("model.") for k in ta)
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert different == [], (name, different)
        assert ma["step"] == mb["step"] == OPTIONS["steps"]
        assert ma.get("average") == mb.get("average")
    evals_a, evals_b = evals(a), evals(b)
    assert len(evals_a) == 10 and evals_a == evals_b


def flip_cached_timings() -> None:
    """Swap the fastest and slowest timing of every cached training decision."""
    for path in Path(os.environ["NEXTCHAR_CACHE_DIR"]).glob("autotune-train-*.json"):
        entry = json.loads(path.read_text())
        names = sorted(entry["seconds"], key=entry["seconds"].get)
        times = [entry["seconds"][n] for n in names]
        entry["seconds"] = dict(zip(names, reversed(times)))
        path.write_text(json.dumps(entry))


def evals(run: Path) -> list[tuple]:
    return [
        (r["step"], r["val_loss"], r["sample"])
        for r in RunFolder(run).read_metrics()
        if r["kind"] == "eval"
    ]


@pytest.mark.slow
def test_cli_run_interrupted_by_sigint_and_resumed_is_bit_identical(tmp_path):
    (tmp_path / "tiny.txt").write_text(TEXT)

    def cli(*args):
        return subprocess.run(
            [sys.executable, *map(str, args)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    warm = cli("-m", "nextchar", "train", "tiny.txt", "--out", "warm", *FLAGS)  # `auto` timed once:
    assert warm.returncode == 0, warm.stderr  # both runs below read the same cached verdict
    with ThreadPoolExecutor(2) as pool:
        whole = pool.submit(cli, "-m", "nextchar", "train", "tiny.txt", "--out", "whole", *FLAGS)
        cut = pool.submit(cli, "-c", INTERRUPT_AT, 17, "train", "tiny.txt", "--out", "cut", *FLAGS)
        whole, cut = whole.result(), cut.result()
    assert whole.returncode == 0, whole.stderr
    assert cut.returncode == 130, cut.stderr
    assert "stopped at step 17 " in cut.stderr  # the signal came while step 17 ran: it finished
    assert load_checkpoint(tmp_path / "cut" / "latest.safetensors")[1]["step"] == 17
    flip_cached_timings()  # `auto` would now choose the other precision; resume keeps its own
    resumed = cli("-m", "nextchar", "train", "--resume", "cut", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical_runs(tmp_path / "whole", tmp_path / "cut")


# averaging from step 12 of 40, so that the interruptions below land before and after its start;
# with every regulariser on, as their masks use the RNG
VARIANTS = {
    "lstm": {},
    "gru": {"cell": "gru"},
    "lstm-ema": {
        "average": "ema",
        "average_start": 0.3,
        "average_decay": 0.8,
        "weight_drop": 0.3,
        "embed_drop": 0.1,
        "locked_dropout": True,
    },
    "gru-swa": {"cell": "gru", "average": "swa", "average_start": 0.3},
}


@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory):
    """The uninterrupted reference runs, in-process, one per variant."""
    folder = tmp_path_factory.mktemp("whole")
    return {
        name: Path(nextchar.train(text=TEXT, out=folder / name, **OPTIONS, **options).path)
        for name, options in VARIANTS.items()
    }


@pytest.mark.parametrize(
    "variant, stops",
    [
        ("lstm", [4]),  # stopped at step 4 (checkpoint k stops after step k), an evaluation step
        ("lstm", [10]),
        ("lstm", [24]),  # just past the epoch boundary (23 windows)
        ("lstm", [8, 13, 9]),  # interrupted three times: at steps 8, 21 and 30
        ("gru", [30]),
        ("lstm-ema", [8, 13, 9]),  # before averaging starts, then twice after
        ("gru-swa", [14]),
    ],
)
@pytest.mark.slow
def test_in_process_interrupted_runs_are_bit_identical(
    tmp_path, monkeypatch, whole_runs, variant, stops
):
    run = tmp_path / "run"
    for session, stop_at in enumerate(stops):
        interrupt_at(monkeypatch, stop_at)
        with pytest.raises(Interrupted) as stopped:
            if session == 0:
                nextchar.train(text=TEXT, out=run, **OPTIONS, **VARIANTS[variant])
            else:
                nextchar.train(resume=run)
        assert stopped.value.signum == signal.SIGINT
        monkeypatch.undo()
    # a crash after the checkpoint logged a future that did not happen, the last line cut short
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 39, "loss": 0.1}) + "\n" + '{"kind": "ev')
    assert nextchar.train(resume=run).steps == OPTIONS["steps"]
    assert_identical_runs(whole_runs[variant], run)
    kinds = [(r["kind"], r["step"]) for r in RunFolder(run).read_metrics()]
    assert kinds == [(r["kind"], r["step"]) for r in RunFolder(whole_runs[variant]).read_metrics()]
    if "average" in VARIANTS[variant]:
        assert (
            load_checkpoint(run / "latest.safetensors")[1]["average"]["count"] == 29
        )  # steps 12-40


def test_resume_of_a_finished_run_changes_nothing_but_can_extend_it(tmp_path, whole_runs):
    run = tmp_path / "run"
    shutil.copytree(whole_runs["lstm"], run)
    before = (run / "best.safetensors").read_bytes()
    assert nextchar.train(resume=run).steps == 40
    assert (run / "best.safetensors").read_bytes() == before
    assert nextchar.train(resume=run, steps=45).steps == 45


def test_resume_refuses_model_changes_and_a_missing_checkpoint(tmp_path, whole_runs):
    with pytest.raises(UserError, match="cannot change --hidden, --layers when resuming"):
        nextchar.train(resume=whole_runs["lstm"], hidden=64, layers=3)
    run = tmp_path / "run"
    shutil.copytree(whole_runs["lstm"], run)
    (run / "latest.safetensors").unlink()
    with pytest.raises(UserError, match="has no resumable checkpoint"):
        nextchar.train(resume=run)


def test_a_refused_resume_leaves_the_machine_record_as_it_was(tmp_path, whole_runs):
    """A resume on another machine decides the precisions afresh, but writes that record only
    once the checkpoint was accepted: a damaged one leaves machine.json byte for byte."""
    run = tmp_path / "run"
    shutil.copytree(whole_runs["lstm"], run)
    record = json.loads((run / "machine.json").read_text())
    record["machine"]["cpu"] = "a machine that is not this one"
    (run / "machine.json").write_text(json.dumps(record))
    before = (run / "machine.json").read_bytes()
    latest = run / "latest.safetensors"
    latest.write_bytes(latest.read_bytes()[:-100])  # cut short
    with pytest.raises(UserError):
        nextchar.train(resume=run)
    assert (run / "machine.json").read_bytes() == before


def test_resume_can_turn_weight_decay_on_for_the_matrices_only(tmp_path, whole_runs):
    run = tmp_path / "run"
    shutil.copytree(whole_runs["lstm"], run)  # trained without weight decay
    assert nextchar.train(resume=run, steps=42, weight_decay=0.05).steps == 42
    _, meta = load_checkpoint(run / "latest.safetensors")
    assert [g["weight_decay"] for g in meta["param_groups"]] == [0.05, 0.0]


@pytest.mark.parametrize("trained, resumed", [("bf16", "fp32"), ("fp32", "bf16")])
def test_resume_in_another_precision_carries_the_state_over(tmp_path, trained, resumed):
    """A run moved to a machine where `auto` decides otherwise (or resumed with --precision)
    continues with its carried hidden state, whatever dtype that state was saved in."""
    from nextchar import devices

    if devices.precision_candidates(torch.device("cpu")) != ("fp32", "bf16"):
        pytest.skip("no bf16 on this CPU")
    run = tmp_path / "run"
    options = dict(OPTIONS, steps=10, dropout=0.0)
    nextchar.train(text=TEXT, out=run, precision=trained, **options)
    _, meta = load_checkpoint(run / "latest.safetensors")
    tensors, _ = load_checkpoint(run / "latest.safetensors")
    assert tensors["hidden.h"].dtype == (torch.bfloat16 if trained == "bf16" else torch.float32)
    assert nextchar.train(resume=run, steps=14, precision=resumed).steps == 14
    record = json.loads((run / "machine.json").read_text())
    assert record["train_precision"]["value"] == resumed
