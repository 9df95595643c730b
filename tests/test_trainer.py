"""The trainer's arithmetic against a hand-written PyTorch loop (plain_loop.py): the same text,
initial weights and settings give the same weights and carried state, to 1e-6 in fp32, after one
step and after 30 (two and a half epochs: warmup, the schedule's decay, clipping, ragged last
windows, the state carried between windows and started afresh each epoch)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nextchar
import plain_loop
from nextchar.data import load_prepared
from nextchar.model import CharRNN
from nextchar.runfolder import RunFolder, load_checkpoint, prefixed

LINE = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
TEXT = "".join(f"{i}: {LINE}" for i in range(90))
# 8 streams of 717-718 targets: 12 windows of 64 an epoch, the last 14 wide and ragged
MODEL = {"cell": "lstm", "embed": 16, "hidden": 32, "layers": 2}
TRAIN = {"batch_size": 8, "seq_len": 64, "lr": 1e-2, "warmup_steps": 5, "final_lr_frac": 0.05,
         "seed": 3}
CASES = {
    "adamw, decay, clipping, wsd": {"optimizer": "adamw", "weight_decay": 0.1, "grad_clip": 0.5,
                                    "schedule": "wsd"},
    "adamw, no clipping, cosine": {"optimizer": "adamw", "weight_decay": 0.0, "grad_clip": 0.0,
                                   "schedule": "cosine"},
    "adam, L2 decay, linear": {"optimizer": "adam", "weight_decay": 0.05, "grad_clip": 1.0,
                               "schedule": "linear"},
    "gru": {"optimizer": "adamw", "weight_decay": 0.1, "grad_clip": 0.5, "schedule": "wsd",
            "cell": "gru"},
}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("steps", [1, 30])
@pytest.mark.parametrize("case", list(CASES))
def test_steps_match_a_plain_pytorch_loop(tmp_path, case, steps):
    options = {**MODEL, **TRAIN, **CASES[case]}
    run = nextchar.train(text=TEXT, out=tmp_path / "run", steps=steps, precision="fp32",
                         dropout=0.0, eval_every=10, sample_chars=20, quiet=True, **options).path
    config = RunFolder(run).read_config()
    data = load_prepared(run / "data").resplit(config.data.val_frac, config.data.test_frac)
    torch.manual_seed(options["seed"])  # the trainer seeds, then builds the model
    initial = CharRNN(config.model).state_dict()
    model, hidden = plain_loop.train(
        initial, data.split("train"), V=config.model.vocab_size, E=options["embed"],
        H=options["hidden"], L=options["layers"], steps=steps,
        **{k: v for k, v in options.items() if k not in ("embed", "hidden", "layers", "seed")})

    tensors, meta = load_checkpoint(run / "latest.safetensors")
    assert meta["step"] == steps
    moved = max_difference(prefixed(tensors, "model"), initial)
    assert moved > 1e-3  # the comparison below is not between two untouched models
    assert max_difference(prefixed(tensors, "model"), model.state_dict()) < 1e-6
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    assert max_difference(prefixed(tensors, "hidden"), dict(zip("hc", states))) < 1e-6


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                    reason="torch.compile on the CPU needs a C compiler (cc or gcc), none found")
def test_compile_trains_and_saves_the_same_weights(tmp_path):
    """--compile runs the steps through torch.compile (inductor writes its kernels into the cache
    folder given here) and trains to the weights of the same run without it."""
    (tmp_path / "tiny.txt").write_text(TEXT)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**MODEL, **TRAIN}.items()]
    flags += ["--steps", "6", "--precision", "fp32", "--sample-chars", "0", "--quiet"]
    # one compile worker: on two cores the default pool's start-up alone took 20 s
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               TORCHINDUCTOR_COMPILE_THREADS="1")

    def train(*args):
        proc = subprocess.run([sys.executable, "-m", "nextchar", "train", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr

    def kernels() -> list[Path]:
        return [p for p in (tmp_path / "inductor").rglob("*") if p.is_file()]

    train("tiny.txt", "--out", "plain", *flags)
    assert kernels() == []
    train("tiny.txt", "--out", "compiled", *flags, "--compile")
    assert kernels()  # it did compile
    assert RunFolder(tmp_path / "compiled").read_config().train.compile is True
    plain, compiled = (prefixed(load_checkpoint(tmp_path / name / "latest.safetensors")[0], "model")
                       for name in ("plain", "compiled"))
    print(f"compiled vs plain: {max_difference(compiled, plain):.2e}")
    assert max_difference(compiled, plain) < 1e-5
