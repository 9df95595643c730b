"""Weight drop, locked dropout and embedding dropout (model.py), each against plain torch.nn run
with the very masks the model drew; and run folders from before these options still load."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nextchar
import nextchar.model as model_module
from nextchar.config import ModelConfig, RunConfig
from nextchar.errors import UserError
from nextchar.model import GATES, CharRNN, locked_dropout

PLAIN = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "rnn-relu": nn.RNN}


@pytest.fixture
def masks(monkeypatch):
    """Every mask the model draws, in order, as (shape, mask)."""
    drawn, real = [], model_module.keep_mask

    def recording(shape, p, device, dtype=torch.float32):
        mask = real(shape, p, device, dtype)
        drawn.append((tuple(shape), mask))
        return mask

    monkeypatch.setattr(model_module, "keep_mask", recording)
    return drawn


def plain_rnn(model: CharRNN, layer: int | None = None) -> nn.Module:
    """A fresh nn.LSTM/GRU/RNN with the model's weights: all its layers, or one of them."""
    config = model.config
    kwargs = {"nonlinearity": "relu"} if config.cell == "rnn-relu" else {}
    layers = range(config.layers) if layer is None else [layer]
    input_size = (config.embed or config.vocab_size) if layer in (None, 0) else config.hidden
    rnn = PLAIN[config.cell](input_size, config.hidden, len(layers), batch_first=True, **kwargs)
    with torch.no_grad():
        for new, old in enumerate(layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(rnn, f"{name}_l{new}").copy_(getattr(model.rnn, f"{name}_l{old}"))
    return rnn


def random_state(model: CharRNN, batch: int):
    state = model.init_hidden(batch)
    return (
        tuple(torch.randn_like(t) for t in state)
        if isinstance(state, tuple)
        else torch.randn_like(state)
    )


def as_list(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "rnn-relu"])
@pytest.mark.parametrize("between", [0.0, 0.3])
def test_weight_dropped_cell_is_the_plain_cell_with_the_masked_weight(
    cell, between, masks, monkeypatch
):
    """Outputs, final state and gradients equal nn.LSTM/GRU/RNN whose W_hh is the drawn mask times
    the raw weight (one fused call, or layer by layer when dropout runs between the layers)."""
    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(
            vocab_size=9, cell=cell, embed=5, hidden=7, layers=2, dropout=between, weight_drop=0.5
        )
    ).train()
    monkeypatch.setattr(model_module, "dropout", lambda x, p, training: x)  # only W_hh masks left
    idx, state = torch.randint(0, 9, (3, 6)), random_state(model, 3)
    logits, hidden = model(idx, state)
    logits.square().sum().backward()
    assert [shape for shape, _ in masks] == [(GATES[cell] * 7, 7)] * 2  # W_hh of each layer
    for _, mask in masks:
        assert set(mask.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled 1/(1-p)

    reference = plain_rnn(model)
    with torch.no_grad():
        for k, (_, mask) in enumerate(masks):
            getattr(reference, f"weight_hh_l{k}").mul_(mask)
    out, ref_hidden = reference(model.embed(idx).detach(), state)
    ref_logits = F.linear(out, model.head.weight.detach(), model.head.bias.detach())
    ref_logits.square().sum().backward()
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    for a, b in zip(as_list(hidden), as_list(ref_hidden)):
        assert torch.allclose(a, b, atol=1e-6)
    for k, (_, mask) in enumerate(masks):
        # d loss / d W_hh = mask * d loss / d (masked W_hh); the other weights as they are
        assert torch.allclose(
            getattr(model.rnn, f"weight_hh_l{k}").grad,
            getattr(reference, f"weight_hh_l{k}").grad * mask,
            atol=1e-5,
        )
        for name in ("weight_ih", "bias_ih", "bias_hh"):
            assert torch.allclose(
                getattr(model.rnn, f"{name}_l{k}").grad,
                getattr(reference, f"{name}_l{k}").grad,
                atol=1e-5,
            )


def test_weight_drop_draws_a_new_mask_per_window(masks):
    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(vocab_size=9, embed=5, hidden=16, layers=1, weight_drop=0.25)
    ).train()
    idx = torch.randint(0, 9, (2, 5))
    model(idx)
    model(idx)
    (_, first), (_, second) = masks
    assert not torch.equal(first, second)
    dropped = torch.cat([first, second]).eq(0).double().mean().item()
    assert 0.15 < dropped < 0.35


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_evaluation_uses_the_raw_weights_and_draws_no_mask(cell, masks):
    """With every regulariser on, an eval-mode model (what eval, dynamic evaluation and the
    sampler's StepModel read) is the plain stacked cell on the raw weights."""
    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(
            vocab_size=9,
            cell=cell,
            embed=5,
            hidden=8,
            layers=2,
            dropout=0.3,
            locked_dropout=True,
            weight_drop=0.5,
            embed_drop=0.2,
        )
    ).eval()
    idx, state = torch.randint(0, 9, (2, 7)), random_state(model, 2)
    logits, hidden = model(idx, state)
    assert masks == []
    out, ref_hidden = plain_rnn(model)(model.embed(idx), state)
    assert torch.allclose(logits, model.head(out), atol=1e-6)
    for a, b in zip(as_list(hidden), as_list(ref_hidden)):
        assert torch.allclose(a, b, atol=1e-6)


def test_locked_dropout_mask_is_constant_over_time():
    torch.manual_seed(0)
    x = torch.ones(64, 50, 32)
    y = locked_dropout(x, 0.4, True)  # (B, T, H)
    assert torch.equal(y, y[:, :1, :].expand_as(y))  # every time step the same as the first
    per_unit = y[:, 0, :]
    assert per_unit.unique().tolist() == pytest.approx([0.0, 1 / 0.6])
    assert abs(per_unit.eq(0).double().mean().item() - 0.4) < 0.05  # a mask per stream and unit
    assert locked_dropout(x, 0.4, False) is x and locked_dropout(x, 0.0, True) is x


def test_locked_dropout_in_the_model_is_the_plain_stack_with_one_mask_per_stream(masks):
    """Layer by layer: plain layer 0, its output times a (B, 1, H) mask, plain layer 1, the
    output times another, then the head."""
    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(vocab_size=9, embed=5, hidden=7, layers=2, dropout=0.5, locked_dropout=True)
    ).train()
    idx, state = torch.randint(0, 9, (3, 6)), random_state(model, 3)
    logits, _ = model(idx, state)
    assert [shape for shape, _ in masks] == [(3, 1, 7), (3, 1, 7)]
    x = model.embed(idx)
    for k, (_, mask) in enumerate(masks):
        x, _ = plain_rnn(model, k)(x, (state[0][k : k + 1], state[1][k : k + 1]))
        x = x * mask
    assert torch.allclose(logits, model.head(x), atol=1e-6)


@pytest.mark.parametrize("embed", [6, 0])
def test_embedding_dropout_zeroes_whole_rows_of_the_table(embed, masks):
    """Training equals the plain model run on the table with the drawn rows zeroed (and the rest
    scaled); a dropped character gets no gradient anywhere in the window."""
    torch.manual_seed(0)
    V = 12
    model = CharRNN(
        ModelConfig(vocab_size=V, embed=embed, hidden=8, layers=1, embed_drop=0.5)
    ).train()
    idx = torch.randint(0, V, (4, 10))
    logits, _ = model(idx)
    [(shape, rows)] = masks
    assert shape == (V, 1)
    table = model.embed.weight if embed else torch.eye(V)
    out, _ = plain_rnn(model)(F.embedding(idx, table * rows))
    assert torch.allclose(logits, model.head(out), atol=1e-6)
    if embed:
        logits.sum().backward()
        dropped = rows[:, 0] == 0
        assert dropped.any() and (~dropped).any()
        assert torch.equal(
            model.embed.weight.grad[dropped], torch.zeros_like(model.embed.weight.grad[dropped])
        )
        seen = torch.zeros(V, dtype=torch.bool)
        seen[idx.unique()] = True
        assert (model.embed.weight.grad[~dropped & seen].abs().sum(1) > 0).all()


def test_the_options_are_validated_like_the_others():
    for options, says in [
        ({"weight_drop": 1.0}, "--weight-drop must be in [0, 1), got 1.0"),
        ({"embed_drop": -0.1}, "--embed-drop must be in [0, 1), got -0.1"),
        ({"locked_dropout": 1}, "--locked-dropout must be true or false, got 1"),
    ]:
        with pytest.raises(UserError) as refused:
            ModelConfig(**options)
        assert str(refused.value) == says


def test_a_run_folder_from_before_these_options_still_loads_and_resumes(
    tmp_path, tiny_text, tiny_options
):
    """config.json written before weight drop, locked dropout, embedding dropout and averaging
    existed: every reader takes the defaults for them (all off)."""
    run = tmp_path / "run"
    nextchar.train(text=tiny_text, out=run, steps=4, **tiny_options)
    raw = json.loads((run / "config.json").read_text())
    for key in ("weight_drop", "embed_drop", "locked_dropout"):
        del raw["model"][key]
    for key in ("average", "average_start", "average_decay"):
        del raw["train"][key]
    (run / "config.json").write_text(json.dumps(raw))
    config = RunConfig.from_json((run / "config.json").read_text())
    assert (config.model.weight_drop, config.model.embed_drop, config.model.locked_dropout) == (
        0.0,
        0.0,
        False,
    )
    assert config.train.average == "none"
    model = nextchar.load(run)
    assert model.evaluate(tiny_text[:200]).chars > 0
    assert nextchar.train(resume=run, steps=6).steps == 6


def test_the_report_summary_names_the_regularisers_and_the_average(tmp_path):
    from nextchar.config import DataConfig, TrainConfig
    from nextchar.report import _summary
    from nextchar.runfolder import RunFolder
    from nextchar.vocab import Vocab

    model = ModelConfig(
        vocab_size=5,
        embed=4,
        hidden=8,
        dropout=0.3,
        locked_dropout=True,
        weight_drop=0.25,
        embed_drop=0.1,
    )
    config = RunConfig(DataConfig(), model, TrainConfig(average="ema", average_start=0.6))
    rows = dict(_summary(RunFolder(tmp_path), CharRNN(model), Vocab("abcde"), config, {}, [], None))
    assert rows["model"] == (
        "lstm, 2 layers x 8 hidden, embedding 4, locked dropout 0.3, "
        "weight drop 0.25, embedding dropout 0.1"
    )
    assert rows["weights"] == "averaged (ema, decay 0.999) from 60% of the run"
