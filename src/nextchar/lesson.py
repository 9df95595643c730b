"""The "hihello" lesson: teach a recurrent network to map `hihell` to `ihello`.

The classic first RNN exercise, kept exact: one-hot characters, one `nn.RNN` whose hidden size
equals the number of classes and whose output is read directly as logits, zero initial hidden
state, cross-entropy summed over the positions, Adam at lr 0.1, one printed line per epoch.
Each epoch is forward -> record prediction and loss of that forward -> backward -> step, so the
loss printed for epoch n is the loss of the weights after n - 1 updates.

Variants (same loop, same printed lines): the cell may be rnn, lstm or gru; the input may be an
embedding instead of a one-hot; a linear head may map a hidden state of any width to the logits.
docs/lesson.md walks through it step by step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .config import DEFAULT_EMBED_HIDDEN, LESSON_CELLS, LessonConfig
from .vocab import Vocab

# An LSTM carries (h, c); RNN and GRU carry h alone. Each tensor is (layers=1, B, H).
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    loss: float  # cross-entropy summed over the positions
    predicted: str  # argmax decoding of the outputs


def format_line(result: EpochResult) -> str:
    """The classic lesson's line: 'predicted string: ihello\\t epoch: 5, loss: 5.607'."""
    return f"predicted string: {result.predicted}\t epoch: {result.epoch}, loss: {result.loss:.3f}"


def one_hot_batch(vocab: Vocab, words: list[str]) -> torch.Tensor:
    """Equal-length words -> float one-hots, shape (B, T, V)."""
    if len({len(w) for w in words}) != 1:
        raise ValueError("one_hot_batch needs words of equal length")
    return torch.stack([vocab.one_hot(w) for w in words])  # (B, T, V)


class LessonModel(nn.Module):
    """Characters -> logits through one recurrent layer.

    embed == 0, hidden == 0: the lesson model, one-hot in, hidden size V, output read as logits
        (for an LSTM the output h is the logits).
    embed == 0, hidden == H: one-hot in, hidden H, linear head H -> V.
    embed == E: nn.Embedding(V, E) -> cell with hidden H (default 8) -> linear head H -> V.

    forward(x, hidden): x is (B, T, V) float one-hots, or (B, T) long ids when embed > 0;
    hidden is (1, B, H) (a pair of them for an LSTM), or None for zeros.
    Returns logits (B, T, V) and the last hidden state.
    """

    def __init__(self, vocab_size: int, cell: str = "rnn", embed: int = 0, hidden: int = 0):
        super().__init__()
        if cell not in LESSON_CELLS:
            raise ValueError(f"cell must be one of {LESSON_CELLS}, got {cell!r}")
        lesson_model = embed == 0 and hidden == 0
        if hidden == 0:
            hidden = vocab_size if embed == 0 else DEFAULT_EMBED_HIDDEN
        self.vocab_size = vocab_size
        self.cell = cell
        self.hidden_size = hidden
        self.embed = nn.Embedding(vocab_size, embed) if embed > 0 else None
        rnn_class = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_class(input_size=embed or vocab_size, hidden_size=hidden, batch_first=True)
        self.head = None if lesson_model else nn.Linear(hidden, vocab_size)

    def initial_hidden(self, batch: int) -> Hidden:
        h0 = torch.zeros(1, batch, self.hidden_size)  # (1, B, H)
        return (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        if hidden is None:
            hidden = self.initial_hidden(x.shape[0])
        if self.embed is not None:
            x = self.embed(x)  # (B, T, E)
        out, hidden = self.rnn(x, hidden)  # (B, T, H)
        logits = out if self.head is None else self.head(out)  # (B, T, V)
        return logits, hidden


def lesson_inputs(vocab: Vocab, text: str, embed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """text -> (x, y): x = text[:-1] as (1, T, V) one-hots or (1, T) ids, y = text[1:] as (1, T) ids."""
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    x = ids[:-1].unsqueeze(0) if embed > 0 else vocab.one_hot(text[:-1]).unsqueeze(0)
    y = ids[1:].unsqueeze(0)  # (1, T)
    return x, y


def _forward_loss(
    model: LessonModel, x: torch.Tensor, y: torch.Tensor, feed: str, criterion: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and the argmax ids (T,) of one forward pass from a zero hidden state."""
    V = model.vocab_size
    hidden = model.initial_hidden(x.shape[0])
    if feed == "sequence":
        logits, _ = model(x, hidden)  # (1, T, V)
        return criterion(logits.reshape(-1, V), y.reshape(-1)), logits.argmax(-1).reshape(-1)
    loss = torch.zeros(())
    predicted = []
    for t in range(y.shape[1]):
        logits, hidden = model(x[:, t : t + 1], hidden)  # (1, 1, V)
        loss = loss + criterion(logits.reshape(-1, V), y[:, t])
        predicted.append(logits.argmax(-1).reshape(-1))
    return loss, torch.cat(predicted)


def build_lesson(config: LessonConfig) -> tuple[Vocab, LessonModel]:
    """The vocab (order of first appearance) and the freshly seeded model of a run."""
    vocab = Vocab.from_text(config.text, order="first")
    torch.manual_seed(config.seed)
    model = LessonModel(len(vocab), config.cell, config.embed, config.hidden)
    return vocab, model


def train_lesson(config: LessonConfig) -> Iterator[EpochResult]:
    """Train on text[:-1] -> text[1:], yielding each epoch's result as it trains.

    Order per epoch, as in the classic lesson: forward, record that forward's prediction and
    loss, backward, optimizer step.
    """
    vocab, model = build_lesson(config)
    x, y = lesson_inputs(vocab, config.text, config.embed)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for epoch in range(1, config.epochs + 1):
        optimizer.zero_grad()
        loss, predicted = _forward_loss(model, x, y, config.feed, criterion)
        result = EpochResult(
            epoch=epoch, loss=loss.item(), predicted=vocab.decode(predicted.tolist())
        )
        loss.backward()
        optimizer.step()
        yield result
