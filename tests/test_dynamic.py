"""Dynamic evaluation against references: learning rate 0 is the static score of one pass, each
step is a hand-written SGD step pulled towards the trained weights, and the run never changes."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextchar.config import DynamicConfig, ModelConfig
from nextchar.dynamic import adapt, score_dynamic
from nextchar.errors import UserError
from nextchar.evaluate import score_ids
from nextchar.model import CharRNN
from processes import TINY_TEXT, TINY_TRAIN_FLAGS


@pytest.fixture
def model() -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(
        ModelConfig(vocab_size=12, cell="lstm", embed=8, hidden=24, layers=2, dropout=0.2)
    )


@pytest.fixture
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 12, 700)


def test_learning_rate_zero_is_the_static_score(model, ids):
    static = score_ids(model, ids, streams=1, precision="fp32")
    for window in (1, 64, 1000):
        dynamic = score_dynamic(model, ids, DynamicConfig(lr=0.0, window=window))
        assert dynamic.chars == static.chars == len(ids) - 1
        assert dynamic.nats_per_char == pytest.approx(static.nats_per_char, rel=1e-6)
        assert dynamic.accuracy == static.accuracy


def hand_written_steps(model, ids, lr, decay, window, windows) -> tuple[float, CharRNN]:
    """Dynamic evaluation by hand over `windows` windows: score with the current weights, then
    theta -= lr * grad of the mean loss, then theta += decay * (trained - theta); the state is
    carried, not reset. Returns (total nats, the stepped copy)."""
    reference = CharRNN(model.config)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    trained = {name: p.detach().clone() for name, p in reference.named_parameters()}
    tokens = torch.from_numpy(ids)
    total, hidden = 0.0, None
    for start in range(0, windows * window, window):
        x, y = tokens[start : start + window][None], tokens[start + 1 : start + window + 1]
        logits, hidden = reference(x, hidden)
        loss = F.cross_entropy(logits[0], y)
        total += loss.item() * window
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        hidden = tuple(h.detach() for h in hidden)
        with torch.no_grad():
            for (name, p), g in zip(reference.named_parameters(), grads):
                stepped = p - lr * g
                p.copy_(stepped + decay * (trained[name] - stepped))
    return total, reference


def test_each_step_is_a_hand_written_sgd_step(model, ids):
    lr, decay, window = 0.5, 0.1, 50
    ids = ids[: 3 * window + 1]
    total, _ = hand_written_steps(model, ids, lr, decay, window, 3)
    result = score_dynamic(model, ids, DynamicConfig(lr=lr, decay=decay, window=window))
    assert result.nats_per_char == pytest.approx(total / (3 * window), rel=1e-6)
    static = score_ids(model, ids, streams=1, precision="fp32").nats_per_char
    assert abs(result.nats_per_char - static) > 1e-4  # the steps changed the score


def test_the_model_itself_is_not_changed(model, ids):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    score_dynamic(model, ids, DynamicConfig(lr=1.0))
    assert model.training  # its mode is left as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_settings_are_refused():
    for bad in ({"lr": -1.0}, {"lr": float("nan")}, {"decay": 1.5}, {"window": 0}, {"window": 2.5}):
        with pytest.raises(UserError):
            DynamicConfig(**bad)


def nextchar(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nextchar", *map(str, args)], capture_output=True, text=True
    )


@pytest.mark.slow
def test_cli_reports_static_and_dynamic_side_by_side_and_leaves_the_run(tmp_path):
    (tmp_path / "t.txt").write_text(TINY_TEXT)
    run = tmp_path / "run"
    assert nextchar("train", tmp_path / "t.txt", "--out", run, *TINY_TRAIN_FLAGS).returncode == 0
    digest = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()
    }
    # a text that repeats one line: adapting to it must make it cheaper than the static score
    text = tmp_path / "repeat.txt"
    text.write_text("7: a lazy fox jumps over the quick brown dog.\n" * 40)
    done = nextchar("eval", run, text, "--dynamic", "--dynamic-lr", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dynamic"]["chars"] == result["chars"] and result["dynamic"]["lr"] == 1
    assert result["dynamic"]["nats_per_char"] < 0.9 * result["nats_per_char"]
    plain = nextchar("eval", run, "--split", "val", "--dynamic")
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("val split: ") and lines[1].startswith("val split, dynamic (lr ")
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()
    }
    assert after == digest
    refused = nextchar("eval", run, "--dynamic", "--dynamic-window", "0")
    assert refused.returncode == 2 and "--dynamic-window" in refused.stderr


def test_adapting_ends_with_the_hand_written_weights_and_leaves_the_model(model, ids):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr, decay, window = 0.5, 0.1, 50
    adapted = adapt(model, ids[: 3 * window + 1], DynamicConfig(lr=lr, decay=decay, window=window))
    _, reference = hand_written_steps(model, ids, lr, decay, window, 3)
    for (name, got), (_, want) in zip(adapted.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(
        dict(adapted.named_parameters())["head.weight"], before["head.weight"]
    )
    assert not any(p.requires_grad for p in adapted.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    unchanged = adapt(model, ids, DynamicConfig(lr=0.0))
    assert all(torch.equal(before[k], v) for k, v in unchanged.state_dict().items())


@pytest.mark.slow
def test_sample_adapt_learns_from_the_prime_and_refuses_without_one(tmp_path):
    (tmp_path / "t.txt").write_text(TINY_TEXT)
    run = tmp_path / "run"
    assert nextchar("train", tmp_path / "t.txt", "--out", run, *TINY_TRAIN_FLAGS).returncode == 0
    digest = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()
    }
    prime = "7: a lazy fox jumps over the quick brown dog.\n" * 20
    common = ["--prime", prime, "--length", "200", "--seed", "3", "--weights", "fp32"]
    plain = nextchar("sample", run, *common)
    adapted = nextchar("sample", run, *common, "--adapt", "--dynamic-lr", "1")
    assert plain.returncode == adapted.returncode == 0, adapted.stderr
    assert adapted.stdout.startswith(prime) and plain.stdout.startswith(prime)
    assert adapted.stdout != plain.stdout
    # learning rate 0 adapts nothing: the very text of a plain sample with that seed
    still = nextchar("sample", run, *common, "--adapt", "--dynamic-lr", "0")
    assert still.stdout == plain.stdout
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()
    }
    assert after == digest
    for bad in (
        ["--adapt"],
        ["--adapt", "--prime", "a"],
        ["--adapt", "--prime", "ab", "--dynamic-window", "0"],
    ):
        refused = nextchar("sample", run, *bad)
        assert refused.returncode == 2, bad
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
