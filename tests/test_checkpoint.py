"""checkpoint.py, the one owner of what a checkpoint holds: a resume point and a weights file
each go through save and load unchanged, loop counters included, and what older checkpoints lack
reads as a fresh run's value."""

import json
import math

import pytest
import torch

from nextchar.checkpoint import (
    LoopState,
    ResumePoint,
    build_model,
    load_checkpoint,
    load_resume,
    read_weights,
    save_checkpoint,
    save_resume,
    save_weights,
    weights_fit,
)
from nextchar.config import ModelConfig
from nextchar.errors import UserError
from nextchar.evaluate import EvalResult
from nextchar.model import CharRNN

CONFIG = ModelConfig(vocab_size=7, cell="lstm", embed=4, hidden=6, layers=2)
RESULT = EvalResult(
    chars=90,
    nats_per_char=1.25,
    bits_per_char=1.8,
    perplexity=3.49,
    accuracy=0.5,
    unknown_chars=2,
    unknown_symbols=["\u2603"],
)


def trained_point() -> ResumePoint:
    """A resume point after one real optimizer step, so the optimizer has state to flatten."""
    torch.manual_seed(0)
    model = CharRNN(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    logits, hidden = model(torch.randint(0, 7, (3, 5)))  # (B, T, V)
    logits.sum().backward()
    optimizer.step()
    return ResumePoint(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        loop=LoopState(
            step=12,
            elapsed=3.5,
            chars_seen=180,
            best_val=1.25,
            best_result=RESULT,
            next_eval_time=20.0,
            last_eval_step=10,
        ),
        rng_cpu=torch.get_rng_state(),
        hidden=tuple(h.detach() for h in hidden),
        average={k: v * 0.5 for k, v in model.state_dict().items()},
        average_kind="ema",
        average_count=4,
        world_size=1,
        batch_size=3,
        vocab="0123456789abcdef",
    )


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_point_round_trips(tmp_path):
    point = trained_point()
    save_resume(tmp_path / "latest.safetensors", point)
    loaded = load_resume(tmp_path / "latest.safetensors")
    assert loaded.loop == point.loop  # every counter, the best result's fields included
    assert same(loaded.model, point.model) and same(loaded.average, point.average)
    assert all(torch.equal(a, b) for a, b in zip(loaded.hidden, point.hidden, strict=True))
    assert torch.equal(loaded.rng_cpu, point.rng_cpu) and loaded.rng_cuda is None
    assert (loaded.average_kind, loaded.average_count) == ("ema", 4)
    assert (loaded.world_size, loaded.batch_size, loaded.vocab) == (1, 3, "0123456789abcdef")
    # the flattened optimizer state loads back into an optimizer as it was saved
    optimizer = torch.optim.AdamW(CharRNN(CONFIG).parameters(), lr=1e-2)
    optimizer.load_state_dict(loaded.optimizer)
    again = optimizer.state_dict()
    assert again["param_groups"] == json.loads(
        json.dumps(point.optimizer["param_groups"])
    )  # betas: a list
    for index, entries in point.optimizer["state"].items():
        assert same(again["state"][index], entries)


def test_loop_state_infinities_and_a_run_without_extras(tmp_path):
    point = trained_point()
    point.loop, point.hidden, point.average, point.average_kind = LoopState(step=3), (), {}, None
    save_resume(tmp_path / "latest.safetensors", point)
    _, meta = load_checkpoint(tmp_path / "latest.safetensors")
    assert meta["best_val"] is None and meta["next_eval_time"] is None and meta["average"] is None
    loaded = load_resume(tmp_path / "latest.safetensors")
    assert loaded.loop == LoopState(step=3)
    assert math.isinf(loaded.loop.best_val) and math.isinf(loaded.loop.next_eval_time)
    assert loaded.hidden == () and loaded.average == {} and loaded.average_kind is None


def test_an_older_resume_point_reads_with_fresh_counters(tmp_path):
    """Checkpoints from before chars_seen, best_result, next_eval_time and last_eval_step."""
    tensors, meta = load_checkpoint(save_and_return(tmp_path))
    old = {
        k: v
        for k, v in meta.items()
        if k
        not in (
            "checksum",
            "chars_seen",
            "best_result",
            "next_eval_time",
            "last_eval_step",
            "vocab",
        )
    }
    save_checkpoint(tmp_path / "old.safetensors", tensors, old)
    loaded = load_resume(tmp_path / "old.safetensors")
    assert loaded.loop == LoopState(step=12, elapsed=3.5, best_val=1.25)
    assert loaded.vocab is None


def save_and_return(tmp_path):
    path = tmp_path / "latest.safetensors"
    save_resume(path, trained_point())
    return path


def test_weights_round_trip_and_the_average_is_the_model(tmp_path):
    point = trained_point()
    save_weights(
        tmp_path / "best.safetensors",
        point.model,
        step=8,
        val=RESULT,
        vocab="v",
        average_kind="swa",
        average_count=2,
    )
    weights, meta = read_weights(tmp_path / "best.safetensors")
    assert same(weights, point.model)
    assert meta["kind"] == "weights" and meta["step"] == 8 and meta["vocab"] == "v"
    assert EvalResult(**meta["val"]) == RESULT and meta["average"] == {"kind": "swa", "count": 2}
    assert weights_fit(weights, CONFIG) and not weights_fit(weights, ModelConfig(vocab_size=8))
    model = build_model(weights, CONFIG)
    assert not model.training and same(model.state_dict(), point.model)

    save_resume(tmp_path / "latest.safetensors", point)  # a resume point with an average
    assert same(read_weights(tmp_path / "latest.safetensors")[0], point.average)
    with pytest.raises(UserError, match="is not a resumable checkpoint"):
        load_resume(tmp_path / "best.safetensors")
