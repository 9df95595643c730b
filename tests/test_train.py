import json

import numpy as np
import pytest
import torch

import nextchar
from nextchar.checkpoint import load_checkpoint, prefixed


def test_periodic_text_reaches_near_zero_bits(tmp_path):
    run = nextchar.train(
        text="abc" * 2000,
        out=tmp_path / "run",
        steps=150,
        cell="lstm",
        hidden=32,
        layers=1,
        embed=8,
        batch_size=8,
        seq_len=16,
        lr=1e-2,
        eval_every=50,
        sample_chars=10,
    )
    assert run.best_val.bits_per_char < 0.05
    assert run.test.bits_per_char < 0.05
    model = run.load()
    assert model.generate("ab", length=9, greedy=True) == "abcabcabcab"


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, tiny_text, tiny_options):
    run = nextchar.train(text=tiny_text, out=tmp_path / "run", steps=20, **tiny_options)
    tensors, meta = load_checkpoint(run.path / "best.safetensors")
    model = nextchar.load(run.path)
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, prefixed(tensors, "model")[name])
    idx = torch.tensor([model.vocab.encode("The quick brown")])
    again = nextchar.load(run.path)
    with torch.no_grad():
        assert torch.equal(model.module(idx)[0], again.module(idx)[0])


def test_run_folder_is_self_sufficient(tmp_path, tiny_text, tiny_options):
    run = nextchar.train(
        text=tiny_text, out=tmp_path / "run", steps=20, eval_every=10, **tiny_options
    )
    names = {p.name for p in run.path.iterdir()}
    assert {
        "config.json",
        "vocab.json",
        "command.txt",
        "best.safetensors",
        "latest.safetensors",
        "metrics.jsonl",
        "data",
    } <= names
    config = json.loads((run.path / "config.json").read_text())
    assert config["format_version"] == 1 and config["model"]["hidden"] == 32
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("eval") == 2 and kinds[-1] == "final" and "train" in kinds
    evals = [r for r in records if r["kind"] == "eval"]
    assert all(len(r["sample"]) > 0 and r["val_bpc"] > 0 for r in evals)
    # the recorded val figure is what evaluating the best weights gives
    model = nextchar.load(run.path)
    from nextchar.data import load_prepared

    data = load_prepared(run.path / "data")
    lo, hi = data.splits["val"]
    best = min(r["val_loss"] for r in evals)
    assert model.evaluate_ids(np.asarray(data.tokens[lo:hi])).nats_per_char == pytest.approx(
        best, rel=1e-6
    )


def test_loss_falls_on_real_text(tmp_path, tiny_text, tiny_options):
    run = nextchar.train(
        text=tiny_text, out=tmp_path / "run", steps=60, eval_every=20, **tiny_options
    )
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if r["kind"] == "eval"]
    assert val[-1] < val[0] < np.log(len(set(tiny_text))) + 0.5


def test_epochs_stop(tmp_path, tiny_text, tiny_options):
    """(--time is tested in test_trainer.py, on a virtual clock and on the real one.)"""
    options = dict(tiny_options, batch_size=8, seq_len=32)
    run = nextchar.train(text=tiny_text, out=tmp_path / "a", epochs=2, **options)
    train_chars = int(len(tiny_text) * 0.9)
    windows = -(-((train_chars - 1) // 8 + 1) // 32)
    assert run.steps == 2 * windows


@pytest.mark.parametrize("cell", ["gru", "rnn", "rnn-relu"])
def test_other_cells_train(tmp_path, tiny_text, tiny_options, cell):
    run = nextchar.train(text=tiny_text, out=tmp_path / cell, steps=10, cell=cell, **tiny_options)
    assert np.isfinite(run.best_val.nats_per_char)
