"""Weight averaging (averaging.py, trainer.py): the average equals an EMA or a mean of the trained
weights computed by hand from snapshots taken after every optimizer step, and it is what
evaluation, best.safetensors and loading a run use, while latest.safetensors keeps the raw weights
for resuming."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import nextchar
from nextchar.averaging import WeightAverage
from nextchar.checkpoint import load_checkpoint, prefixed
from nextchar.config import ModelConfig, TrainConfig
from nextchar.errors import UserError
from nextchar.evaluate import score_ids
from nextchar.model import CharRNN
from nextchar.runfolder import RunFolder
from nextchar.trainer import Trainer


def hand_average(snapshots: list[dict[str, torch.Tensor]], kind: str, decay: float) -> dict:
    """The plain mean, or the bias-corrected EMA as a weighted sum: snapshot i of n weighs
    (1 - decay) decay^(n-1-i) / (1 - decay^n), which sum to 1."""
    n = len(snapshots)
    if kind == "swa":
        weights = [1 / n] * n
    else:
        weights = [(1 - decay) * decay ** (n - 1 - i) / (1 - decay**n) for i in range(n)]
    return {name: sum(w * s[name] for w, s in zip(weights, snapshots)) for name in snapshots[0]}


def assert_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-6), name


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_the_average_is_the_hand_computed_one(kind):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=7, embed=3, hidden=5, layers=2))
    average = WeightAverage(model, kind, decay=0.8)
    snapshots = []
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        average.update(model)
    assert average.count == 6
    assert_close(dict(average.module.named_parameters()), hand_average(snapshots, kind, 0.8))
    assert_close(dict(model.named_parameters()), snapshots[-1])  # the trained weights untouched
    restored = WeightAverage(model, kind, decay=0.8)
    restored.load(average.tensors(), average.count)
    assert restored.count == 6
    for a, b in zip(restored.module.parameters(), average.module.parameters()):
        assert torch.equal(a, b)
    assert WeightAverage(model, kind, 0.8).tensors() == {}  # nothing averaged, nothing saved


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_training_evaluates_keeps_and_loads_the_average(
    tmp_path, tiny_text, tiny_options, monkeypatch, kind
):
    trainers, real_fit = [], Trainer._fit
    monkeypatch.setattr(Trainer, "_fit", lambda self: trainers.append(self) or real_fit(self))
    trained = {}  # step -> the trained weights after it

    def snapshot(optimizer, args, kwargs):
        trainer = trainers[-1]
        trained[trainer.loop.step] = {
            n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()
        }

    steps, start, decay = 20, 0.3, 0.7
    hook = register_optimizer_step_post_hook(snapshot)
    try:
        run = nextchar.train(
            text=tiny_text,
            out=tmp_path / "run",
            steps=steps,
            eval_every=4,
            eval_chars=0,
            precision="fp32",
            average=kind,
            average_start=start,
            average_decay=decay,
            **tiny_options,
        ).path
    finally:
        hook.remove()
    assert sorted(trained) == list(range(1, steps + 1))
    first = next(s for s in trained if s / steps >= start)  # progress after step s is s / steps

    def weights_in_use(step: int) -> dict:
        if step < first:
            return trained[step]
        return hand_average([trained[s] for s in range(first, step + 1)], kind, decay)

    # every evaluation scored the weights in use at its step
    folder = RunFolder(run)
    config = folder.read_config()
    val = folder.training_data().resplit(config.data.val_frac, config.data.test_frac).split("val")
    scorer = CharRNN(config.model)
    evals = [r for r in folder.read_metrics() if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8, 12, 16, 20]
    for record in evals:
        scorer.load_state_dict(weights_in_use(record["step"]))
        assert record["val_loss"] == pytest.approx(score_ids(scorer, val).nats_per_char, abs=1e-5)
        assert record["averaged_steps"] == max(0, record["step"] - first + 1)
    # best.safetensors holds the weights in use at the best evaluation
    best, meta = load_checkpoint(run / "best.safetensors")
    assert meta["average"]["kind"] == kind
    assert_close(prefixed(best, "model"), weights_in_use(meta["step"]))
    assert min(r["val_loss"] for r in evals) == pytest.approx(meta["val"]["nats_per_char"])
    # latest.safetensors: the raw weights to resume from, and the average beside them
    latest, meta = load_checkpoint(run / "latest.safetensors")
    assert meta["average"] == {"kind": kind, "count": steps - first + 1}
    assert_close(prefixed(latest, "model"), trained[steps])
    assert_close(prefixed(latest, "average"), weights_in_use(steps))
    # loading a run (for sampling, eval) gives the average, from either checkpoint
    for which, step in (("latest", steps), ("best", meta["step"])):
        module = nextchar.load(run, which).module
        assert_close(dict(module.named_parameters()), weights_in_use(step))


def test_averaging_turned_on_by_a_resume_starts_from_there(tmp_path, tiny_text, tiny_options):
    run = tmp_path / "run"
    nextchar.train(text=tiny_text, out=run, steps=10, **tiny_options)
    assert load_checkpoint(run / "latest.safetensors")[1]["average"] is None
    nextchar.train(resume=run, steps=14, average="swa", average_start=0.5)
    tensors, meta = load_checkpoint(run / "latest.safetensors")
    assert meta["average"] == {"kind": "swa", "count": 4}  # steps 11-14, all past half the run
    assert any(k.startswith("average.") for k in tensors)


def test_the_averaging_options_are_validated():
    for options, says in [
        ({"average": "mean"}, "--average must be one of none, ema, swa, got 'mean'"),
        (
            {"average_start": 1.0},
            "--average-start must be a fraction of the run in [0, 1), got 1.0",
        ),
        ({"average_decay": 1.0}, "--average-decay must be in (0, 1), got 1.0"),
        ({"average_decay": 0}, "--average-decay must be in (0, 1), got 0.0"),
    ]:
        with pytest.raises(UserError) as refused:
            TrainConfig(**options)
        assert str(refused.value) == says
