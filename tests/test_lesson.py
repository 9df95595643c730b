"""The hihello lesson, checked against plain torch.nn, a naive loop and the closed-form recurrence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nextchar.errors import UserError
from nextchar.lesson import (
    EpochResult,
    LessonConfig,
    LessonModel,
    format_line,
    lesson_inputs,
    one_hot_batch,
    train_lesson,
)
from nextchar.vocab import Vocab

HIHELL = [0, 1, 0, 2, 3, 3]  # ids of 'hihell' with the alphabet h i e l o
IHELLO = [1, 0, 2, 3, 3, 4]


def rnn_by_hand(rnn: nn.RNN, xs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) for one sequence xs (T, I), h0 (H,)."""
    h, outs = h0, []
    for x_t in xs:
        h = torch.tanh(
            rnn.weight_ih_l0 @ x_t + rnn.bias_ih_l0 + rnn.weight_hh_l0 @ h + rnn.bias_hh_l0
        )
        outs.append(h)
    return torch.stack(outs)  # (T, H)


# --- 1. one-hot characters ---------------------------------------------------------------------


def test_one_hot_helo_and_hihello():
    helo = Vocab.from_text("hello", order="first")
    assert helo.symbols == ["h", "e", "l", "o"]
    assert torch.equal(helo.one_hot("hello"), torch.eye(4)[[0, 1, 2, 2, 3]])
    hihello = Vocab.from_text("hihello", order="first")
    assert hihello.symbols == ["h", "i", "e", "l", "o"]
    assert torch.equal(hihello.one_hot("hihell"), torch.eye(5)[HIHELL])


def test_one_hot_batch_stacks_words_and_refuses_ragged_ones():
    helo = Vocab.from_text("helo", order="first")
    batch = one_hot_batch(helo, ["hello", "eolll", "lleel"])
    assert batch.shape == (3, 5, 4)
    assert batch.dtype == torch.float32
    assert torch.equal(batch[1], torch.eye(4)[[1, 3, 2, 2, 2]])
    with pytest.raises(ValueError):
        one_hot_batch(helo, ["hello", "hell"])


# --- 2-4. nn.RNN: one step, unfolding, batching ------------------------------------------------


def test_one_rnn_step_shapes_and_value():
    torch.manual_seed(0)
    rnn = nn.RNN(input_size=4, hidden_size=2, batch_first=True)
    x = torch.eye(4)[[0]].view(1, 1, 4)
    h0 = torch.tensor([[[0.3, -0.7]]])
    out, h1 = rnn(x, h0)
    assert out.shape == (1, 1, 2) and h1.shape == (1, 1, 2)
    assert torch.allclose(out[0], rnn_by_hand(rnn, x[0], h0[0, 0]), atol=1e-6)
    assert torch.equal(out[0, -1], h1[0, 0])


def test_unfolding_equals_naive_loop_and_closed_form():
    torch.manual_seed(1)
    rnn = nn.RNN(input_size=4, hidden_size=2, batch_first=True)
    xs = Vocab.from_text("helo", order="first").one_hot("hello").unsqueeze(0)  # (1, 5, 4)
    h0 = torch.tensor([[[0.5, -0.25]]])
    outs, h_last = rnn(xs, h0)
    assert outs.shape == (1, 5, 2)
    h, stepped = h0, []
    for t in range(5):
        o, h = rnn(xs[:, t : t + 1], h)
        stepped.append(o)
    assert torch.allclose(torch.cat(stepped, dim=1), outs, atol=1e-6)
    assert torch.allclose(h, h_last, atol=1e-6)
    assert torch.allclose(rnn_by_hand(rnn, xs[0], h0[0, 0]), outs[0], atol=1e-6)


def test_batched_rows_equal_each_sequence_alone():
    torch.manual_seed(2)
    rnn = nn.RNN(input_size=4, hidden_size=2, batch_first=True)
    helo = Vocab.from_text("helo", order="first")
    words = ["hello", "eolll", "lleel"]
    h0 = torch.randn(1, 3, 2)
    outs, h_last = rnn(one_hot_batch(helo, words), h0)
    assert outs.shape == (3, 5, 2) and h_last.shape == (1, 3, 2)
    for b, word in enumerate(words):
        alone, _ = rnn(helo.one_hot(word).unsqueeze(0), h0[:, b : b + 1].contiguous())
        assert torch.allclose(outs[b], alone[0], atol=1e-6)
        assert torch.allclose(outs[b], rnn_by_hand(rnn, helo.one_hot(word), h0[0, b]), atol=1e-6)


# --- the lesson model --------------------------------------------------------------------------


def test_lesson_inputs_shift_the_text_by_one():
    vocab = Vocab.from_text("hihello", order="first")
    x, y = lesson_inputs(vocab, "hihello", embed=0)
    assert torch.equal(x, torch.eye(5)[HIHELL].unsqueeze(0))  # (1, 6, 5)
    assert y.tolist() == [IHELLO]
    ids, y2 = lesson_inputs(vocab, "hihello", embed=3)
    assert ids.tolist() == [HIHELL] and torch.equal(y, y2)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_lesson_model_is_one_plain_cell_whose_output_is_the_logits(cell):
    torch.manual_seed(3)
    model = LessonModel(5, cell=cell)
    torch.manual_seed(3)
    plain = getattr(nn, cell.upper())(input_size=5, hidden_size=5, batch_first=True)
    assert model.head is None and model.embed is None
    x = torch.eye(5)[HIHELL].unsqueeze(0)
    logits, hidden = model(x)
    zeros = torch.zeros(1, 1, 5)
    expected, _ = plain(x, (zeros, zeros) if cell == "lstm" else zeros)
    assert logits.shape == (1, 6, 5)
    assert torch.allclose(logits, expected, atol=1e-6)
    h = hidden[0] if cell == "lstm" else hidden
    assert torch.allclose(logits[:, -1], h[0], atol=1e-6)  # for an LSTM the output h is the logits


def test_model_shapes_follow_embed_and_hidden():
    assert LessonModel(5).hidden_size == 5
    with_head = LessonModel(5, hidden=5)
    assert with_head.head is not None and with_head.embed is None  # hidden > 0 -> a linear head
    embedded = LessonModel(5, cell="gru", embed=4)
    assert embedded.hidden_size == 8 and embedded.embed.weight.shape == (5, 4)
    logits, h = embedded(torch.tensor([HIHELL, IHELLO]))  # (B=2, T=6) ids
    assert logits.shape == (2, 6, 5) and h.shape == (1, 2, 8)


@pytest.mark.parametrize(
    "settings",
    [dict(cell="rnn"), dict(cell="lstm", hidden=7), dict(cell="gru", embed=10, hidden=8)],
)
def test_model_fed_char_by_char_equals_whole_sequence(settings):
    torch.manual_seed(4)
    model = LessonModel(5, **settings)
    x = torch.tensor([HIHELL]) if settings.get("embed") else torch.eye(5)[HIHELL].unsqueeze(0)
    whole, _ = model(x)
    hidden, steps = None, []
    for t in range(6):
        logits, hidden = model(x[:, t : t + 1], hidden)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-6)


# --- training ----------------------------------------------------------------------------------


def plain_lesson_losses(seed: int, epochs: int) -> tuple[list[float], list[str]]:
    """The classic lesson written with plain torch.nn: losses and predictions per epoch."""
    torch.manual_seed(seed)
    rnn = nn.RNN(input_size=5, hidden_size=5, batch_first=True)
    optimizer = torch.optim.Adam(rnn.parameters(), lr=0.1)
    x, y = torch.eye(5)[HIHELL].unsqueeze(0), torch.tensor(IHELLO)
    losses, predictions = [], []
    for _ in range(epochs):
        optimizer.zero_grad()
        out, _ = rnn(x, torch.zeros(1, 1, 5))
        loss = F.cross_entropy(out[0], y, reduction="sum")
        losses.append(loss.item())
        predictions.append("".join("hielo"[i] for i in out[0].argmax(-1).tolist()))
        loss.backward()
        optimizer.step()
    return losses, predictions


@pytest.mark.parametrize("feed", ["char", "sequence"])
def test_lesson_training_equals_plain_torch(feed):
    results = list(train_lesson(LessonConfig(seed=5, epochs=8, feed=feed)))
    losses, predictions = plain_lesson_losses(seed=5, epochs=8)
    assert [r.epoch for r in results] == list(range(1, 9))
    assert [r.predicted for r in results] == predictions
    assert results[0].loss == pytest.approx(losses[0], abs=1e-5)  # epoch 1: the untrained model
    assert [r.loss for r in results] == pytest.approx(losses, abs=1e-4)


def test_variant_epoch_one_loss_equals_plain_torch():
    result = next(iter(train_lesson(LessonConfig(cell="gru", embed=10, hidden=8, seed=6))))
    torch.manual_seed(6)
    embed, gru, head = nn.Embedding(5, 10), nn.GRU(10, 8, batch_first=True), nn.Linear(8, 5)
    out, _ = gru(embed(torch.tensor([HIHELL])), torch.zeros(1, 1, 8))
    loss = F.cross_entropy(head(out)[0], torch.tensor(IHELLO), reduction="sum")
    assert result.loss == pytest.approx(loss.item(), abs=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(cell="lstm"),
        dict(cell="gru", seed=3),
        dict(embed=10, hidden=8, cell="lstm"),
        dict(hidden=6),
    ],
)
def test_char_and_sequence_feeding_train_the_same(settings):
    by_char = list(train_lesson(LessonConfig(feed="char", **settings)))
    by_sequence = list(train_lesson(LessonConfig(feed="sequence", **settings)))
    assert len(by_char) == len(by_sequence) == 15
    for a, b in zip(by_char, by_sequence):
        assert a.loss == pytest.approx(b.loss, abs=1e-5)
        assert a.predicted == b.predicted


def test_default_run_reaches_ihello_and_its_loss_falls():
    results = list(train_lesson(LessonConfig()))
    assert len(results) == 15
    assert results[-1].predicted == "ihello"
    assert results[0].predicted != "ihello"  # it learned it
    assert results[-1].loss < 0.5 * results[0].loss
    floor = 6 * math.log(1 + 4 * math.exp(-2))  # logits in [-1, 1]: the loss cannot go lower
    assert all(r.loss > floor for r in results)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("feed", ["char", "sequence"])
def test_embedding_variant_reaches_ihello(cell, feed):
    for seed in (0, 1, 2):
        last = list(
            train_lesson(LessonConfig(cell=cell, feed=feed, embed=10, hidden=8, seed=seed))
        )[-1]
        assert last.predicted == "ihello", (cell, feed, seed)


def test_other_words_train_too():
    results = list(train_lesson(LessonConfig(text="abcab", epochs=3, embed=4, hidden=6)))
    assert len(results) == 3
    assert all(len(r.predicted) == 4 and set(r.predicted) <= set("abc") for r in results)
    two = list(train_lesson(LessonConfig(text="ab", epochs=1)))
    assert len(two[0].predicted) == 1


# --- printing and validation -------------------------------------------------------------------


def test_format_line_is_the_classic_line():
    line = format_line(EpochResult(epoch=5, loss=5.60749, predicted="ihello"))
    assert line == "predicted string: ihello\t epoch: 5, loss: 5.607"


@pytest.mark.parametrize(
    "settings, flag",
    [
        (dict(text="h"), "--text"),
        (dict(text=""), "--text"),
        (dict(epochs=0), "--epochs"),
        (dict(epochs=-3), "--epochs"),
        (dict(lr=0.0), "--lr"),
        (dict(lr=-0.1), "--lr"),
        (dict(lr=float("nan")), "--lr"),
        (dict(lr=float("inf")), "--lr"),
        (dict(cell="rnn-relu"), "--cell"),
        (dict(feed="batch"), "--feed"),
        (dict(embed=-1), "--embed"),
        (dict(hidden=-1), "--hidden"),
    ],
)
def test_config_mistakes_are_user_errors_naming_the_flag(settings, flag):
    with pytest.raises(UserError, match=flag):
        LessonConfig(**settings)


def test_text_error_message():
    with pytest.raises(UserError, match=r"^--text must have at least 2 characters"):
        LessonConfig(text="x")
