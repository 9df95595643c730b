"""The trainer's arithmetic against a hand-written PyTorch loop (plain_loop.py): the same text,
initial weights and settings give the same weights and carried state, to 1e-6 in fp32, after one
step and after 30 (two and a half epochs: warmup, the schedule's decay, clipping, ragged last
windows, the state carried between windows and started afresh each epoch)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nextchar
import nextchar.trainer
import nextchar.validation
import plain_loop
from clock import install as virtual_clock
from nextchar.checkpoint import load_checkpoint, prefixed
from nextchar.data import load_prepared
from nextchar.model import CharRNN
from nextchar.runfolder import RunFolder
from processes import cli

LINE = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
TEXT = "".join(f"{i}: {LINE}" for i in range(90))
# 8 streams of 717-718 targets: 12 windows of 64 an epoch, the last 14 wide and ragged
MODEL = {"cell": "lstm", "embed": 16, "hidden": 32, "layers": 2}
TRAIN = {
    "batch_size": 8,
    "seq_len": 64,
    "lr": 1e-2,
    "warmup_steps": 5,
    "final_lr_frac": 0.05,
    "seed": 3,
}
CASES = {
    "adamw, decay, clipping, wsd": {
        "optimizer": "adamw",
        "weight_decay": 0.1,
        "grad_clip": 0.5,
        "schedule": "wsd",
    },
    "adamw, no clipping, cosine": {
        "optimizer": "adamw",
        "weight_decay": 0.0,
        "grad_clip": 0.0,
        "schedule": "cosine",
    },
    "adam, L2 decay, linear": {
        "optimizer": "adam",
        "weight_decay": 0.05,
        "grad_clip": 1.0,
        "schedule": "linear",
    },
    "gru": {
        "optimizer": "adamw",
        "weight_decay": 0.1,
        "grad_clip": 0.5,
        "schedule": "wsd",
        "cell": "gru",
    },
}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("steps", [1, 30])
@pytest.mark.parametrize("case", list(CASES))
def test_steps_match_a_plain_pytorch_loop(tmp_path, case, steps):
    options = {**MODEL, **TRAIN, **CASES[case]}
    run = nextchar.train(
        text=TEXT,
        out=tmp_path / "run",
        steps=steps,
        precision="fp32",
        dropout=0.0,
        eval_every=10,
        sample_chars=20,
        quiet=True,
        **options,
    ).path
    config = RunFolder(run).read_config()
    data = load_prepared(run / "data").resplit(config.data.val_frac, config.data.test_frac)
    torch.manual_seed(options["seed"])  # the trainer seeds, then builds the model
    initial = CharRNN(config.model).state_dict()
    model, hidden = plain_loop.train(
        initial,
        data.split("train"),
        V=config.model.vocab_size,
        E=options["embed"],
        H=options["hidden"],
        L=options["layers"],
        steps=steps,
        **{k: v for k, v in options.items() if k not in ("embed", "hidden", "layers", "seed")},
    )

    tensors, meta = load_checkpoint(run / "latest.safetensors")
    assert meta["step"] == steps
    moved = max_difference(prefixed(tensors, "model"), initial)
    assert moved > 1e-3  # the comparison below is not between two untouched models
    assert max_difference(prefixed(tensors, "model"), model.state_dict()) < 1e-6
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    # an LSTM's cell state grows past 10 here: a few float32 roundings of the fused optimizer
    # (which the plain loop does not use) show in it as 1e-5, so it is compared relatively
    for name, state in zip("hc", states):
        torch.testing.assert_close(tensors[f"hidden.{name}"], state, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")),
    reason="torch.compile on the CPU needs a C compiler (cc or gcc), none found",
)
@pytest.mark.slow
def test_compile_trains_and_saves_the_same_weights(tmp_path):
    """--compile runs the steps through torch.compile (inductor writes its kernels into the cache
    folder given here) and trains to the weights of the same run without it."""
    (tmp_path / "tiny.txt").write_text(TEXT)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**MODEL, **TRAIN}.items()]
    flags += ["--steps", "6", "--precision", "fp32", "--sample-chars", "0", "--quiet"]
    # one compile worker: on two cores the default pool's start-up alone took 20 s
    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
        TORCHINDUCTOR_COMPILE_THREADS="1",
    )

    def train(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "nextchar", "train", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr

    def kernels() -> list[Path]:
        return [p for p in (tmp_path / "inductor").rglob("*") if p.is_file()]

    train("tiny.txt", "--out", "plain", *flags)
    assert kernels() == []
    train("tiny.txt", "--out", "compiled", *flags, "--compile")
    assert kernels()  # it did compile
    assert RunFolder(tmp_path / "compiled").read_config().train.compile is True
    plain, compiled = (
        prefixed(load_checkpoint(tmp_path / name / "latest.safetensors")[0], "model")
        for name in ("plain", "compiled")
    )
    print(f"compiled vs plain: {max_difference(compiled, plain):.2e}")
    assert max_difference(compiled, plain) < 1e-5


# ---- --time as the only stop, on a virtual clock (clock.py) ---------------------------------

TIMED = {
    "embed": 8,
    "hidden": 16,
    "layers": 1,
    "batch_size": 4,
    "seq_len": 16,
    "lr": 1e-2,
    "warmup_steps": 5,
    "final_lr_frac": 0.05,
    "dropout": 0.0,
    "weight_decay": 0.0,
    "precision": "fp32",
    "sample_chars": 0,
    "log_every": 1,
    "quiet": True,
}


@pytest.mark.parametrize("cooldown", [0.2, 0.5])
def test_time_alone_stops_the_run_plans_the_schedule_and_evaluates_ten_times(
    tmp_path, monkeypatch, cooldown
):
    """--time 100 with a step of 1 s and free evaluations: 100 steps; an evaluation every tenth of
    the budget (the last at the end); the lr of each step that of a 100-step schedule, decaying
    over the last `cooldown` of it."""
    virtual_clock(1.0, monkeypatch)
    run = nextchar.train(text=TEXT, out=tmp_path / "run", time=100, cooldown=cooldown, **TIMED)
    records = RunFolder(run.path).read_metrics()
    assert (records[-1]["stop"], run.steps) == ("time", 100)
    assert [r["step"] for r in records if r["kind"] == "eval"] == list(range(10, 101, 10))
    lrs = [(r["step"], r["lr"]) for r in records if r["kind"] == "train"]
    assert [step for step, _ in lrs] == list(range(1, 101))
    for step, lr in lrs:  # the lr logged at step k is that of its (k-1)-th step from 0
        assert lr == pytest.approx(
            plain_loop.lr_at(
                step - 1,
                100,
                TIMED["lr"],
                TIMED["warmup_steps"],
                "wsd",
                TIMED["final_lr_frac"],
                cooldown,
            ),
            rel=1e-12,
        )
    assert lrs[-1][1] < 0.1 * TIMED["lr"]  # decayed by the end of the budget


def test_time_budget_includes_evaluations_and_saving(tmp_path, monkeypatch):
    """Evaluations that take 3 s each (on the virtual clock) come out of the budget: the run
    keeps back time for its last evaluation and the test score, and ends within --time."""
    clock = virtual_clock(1.0, monkeypatch)
    real_score = nextchar.validation.score_ids

    def slow_score(*args, **kwargs):
        clock.now += 3.0
        return real_score(*args, **kwargs)

    monkeypatch.setattr(nextchar.validation, "score_ids", slow_score)
    run = nextchar.train(text=TEXT, out=tmp_path / "run", time=100, **TIMED)
    records = RunFolder(run.path).read_metrics()
    assert records[-1]["kind"] == "final" and records[-1]["stop"] == "time"
    assert 95 <= records[-1]["time"] <= 100 and run.steps < 80
    evals = [r["time"] for r in records if r["kind"] == "eval"]
    assert evals[:-1] == list(range(10, 91, 10))  # every tenth of the budget, then the last one
    assert 90 < evals[-1] <= 100 - 2 * 3  # at the end, with time kept for it and the test score


@pytest.mark.slow
def test_time_alone_on_the_real_clock(tmp_path):
    """The same through the CLI with real time: it stops on time, soon after the budget (the
    margin is for a loaded two-core machine; the exact accounting is tested above)."""
    (tmp_path / "tiny.txt").write_text(TEXT)
    started = time.monotonic()
    code, err = cli(
        "train",
        tmp_path / "tiny.txt",
        "--out",
        tmp_path / "run",
        "--time",
        "3s",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--embed",
        "8",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--precision",
        "fp32",
        "--quiet",
    )
    assert code == 0, err
    final = RunFolder(tmp_path / "run").read_metrics()[-1]
    assert final["stop"] == "time" and final["step"] > 0
    assert final["time"] < 3 + 30 and time.monotonic() - started < 3 + 60
