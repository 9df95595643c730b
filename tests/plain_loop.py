"""The training arithmetic the README promises, written out in plain PyTorch and independent of
nextchar.trainer, as the reference its tests compare with:

- the training text cut into B contiguous streams (the first n % B one target longer), read in
  windows of T, the hidden state carried from window to window (detached) and started afresh each
  epoch; targets past a stream's end are not scored;
- the loss of a window: cross-entropy summed over its scored targets, divided by their count;
- AdamW (or Adam), betas (0.9, 0.99), weight decay on the weight matrices of the recurrent layers
  and the head only (not biases, not the embedding);
- gradients clipped to a global norm;
- lr: linear warmup, then wsd (full rate, linear decay over the last 20% of the run), cosine,
  linear or constant, decaying to lr * final_lr_frac.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def lr_at(
    step: int,
    total: int,
    lr: float,
    warmup: int,
    schedule: str,
    final_frac: float,
    cooldown: float = 0.2,
) -> float:
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    p = step / total
    if schedule == "wsd":
        decay = 1.0 - (1.0 - final_frac) * max(0.0, p - (1.0 - cooldown)) / cooldown
    elif schedule == "cosine":
        decay = final_frac + (1.0 - final_frac) * (1.0 + math.cos(math.pi * p)) / 2.0
    elif schedule == "linear":
        decay = 1.0 - (1.0 - final_frac) * p
    else:
        decay = 1.0
    return lr * warm * decay


def windows(
    tokens: np.ndarray, B: int, T: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """(x, y, first window of an epoch) for ever; x, y (B, width), y IGNORE past a stream's end."""
    n = len(tokens) - 1
    lengths = [n // B + (1 if b < n % B else 0) for b in range(B)]
    starts = [sum(lengths[:b]) for b in range(B)]
    longest = max(lengths)
    while True:
        for offset in range(0, longest, T):
            width = min(T, longest - offset)
            x = torch.zeros(B, width, dtype=torch.int64)
            y = torch.full((B, width), IGNORE, dtype=torch.int64)
            for b in range(B):
                for t in range(width):
                    at = min(starts[b] + offset + t, n)  # past the end: read on, never scored
                    x[b, t] = int(tokens[at])
                    if offset + t < lengths[b]:
                        y[b, t] = int(tokens[at + 1])
            yield x, y, offset == 0


class PlainRNN(nn.Module):
    def __init__(self, cell: str, V: int, E: int, H: int, L: int):
        super().__init__()
        self.embed = nn.Embedding(V, E)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](E, H, L, batch_first=True)
        self.head = nn.Linear(H, V)

    def forward(self, x, hidden=None):
        out, hidden = self.rnn(self.embed(x), hidden)
        return self.head(out), hidden


def train(
    initial: dict[str, torch.Tensor],
    tokens: np.ndarray,
    *,
    cell: str,
    V: int,
    E: int,
    H: int,
    L: int,
    batch_size: int,
    seq_len: int,
    steps: int,
    lr: float,
    warmup_steps: int,
    schedule: str,
    final_lr_frac: float,
    optimizer: str,
    weight_decay: float,
    grad_clip: float,
) -> tuple[PlainRNN, torch.Tensor | tuple]:
    """`steps` steps from the weights `initial` -> the model and the carried hidden state."""
    model = PlainRNN(cell, V, E, H, L)
    model.load_state_dict(initial)
    matrices = [p for n, p in model.rnn.named_parameters() if n.startswith("weight_")]
    matrices.append(model.head.weight)
    others = [
        model.embed.weight,
        model.head.bias,
        *(p for n, p in model.rnn.named_parameters() if n.startswith("bias_")),
    ]
    groups = [
        {"params": matrices, "weight_decay": weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(
        groups, lr=lr, betas=(0.9, 0.99)
    )
    batches = windows(tokens, batch_size, seq_len)
    hidden = None
    for step in range(steps):
        x, y, new_epoch = next(batches)
        if new_epoch:
            hidden = None
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_steps, schedule, final_lr_frac)
        logits, hidden = model(x, hidden)  # (B, T, V)
        scored = int((y != IGNORE).sum())
        loss = (
            F.cross_entropy(
                logits.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            / scored
        )
        opt.zero_grad()
        loss.backward()
        if grad_clip > 0:
            norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
            for p in model.parameters():
                p.grad.mul_(torch.clamp(grad_clip / (norm + 1e-6), max=1.0))
        opt.step()
        hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
    return model, hidden
