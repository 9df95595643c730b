"""The plainest PyTorch character LSTM loop, as a same-run reference for bench/quality.py.

Embedding(V, 64) -> nn.LSTM(64, H, 2) -> Linear, fp32; contiguous streams of the first 90% of the
text (batch 32 x 64, carried detached state), AdamW with a cosine schedule over a wall-clock budget
and gradient clipping at 1; then the last 10% (nextchar's val and test splits) scored in one long
pass with carried state. It shares no code with nextchar.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PlainLSTM(nn.Module):
    def __init__(self, vocab: int, hidden: int, embed: int = 64, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.lstm(self.embed(x), state)  # (B, T, H)
        return self.head(out), state  # (B, T, V)


def train_and_score(
    text: str,
    hidden: int,
    seconds: float,
    lr: float,
    batch: int = 32,
    seq_len: int = 64,
    seed: int = 0,
) -> dict:
    """Train for `seconds` of wall clock, then score the last 10% -> nats/char and steps."""
    torch.manual_seed(seed)
    symbols = sorted(set(text))
    index = {c: i for i, c in enumerate(symbols)}
    ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
    cut = len(ids) - round(len(ids) * 0.1)
    train, held = torch.from_numpy(ids[:cut]), torch.from_numpy(ids[cut:])
    per_stream = (len(train) - 1) // batch
    xs = train[: per_stream * batch].view(batch, per_stream)
    ys = train[1 : per_stream * batch + 1].view(batch, per_stream)
    windows = per_stream // seq_len
    model = PlainLSTM(len(symbols), hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    state, step, started = None, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / seconds)))
        w = step % windows
        if w == 0:
            state = None
        x, y = xs[:, w * seq_len : (w + 1) * seq_len], ys[:, w * seq_len : (w + 1) * seq_len]
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state = tuple(s.detach() for s in state)
        step += 1
    model.eval()
    nats, state = 0.0, None
    with torch.inference_mode():
        for start in range(0, len(held) - 1, 512):
            x = held[start : start + 512][None]
            y = held[start + 1 : start + 513][None]
            x = x[:, : y.size(1)]
            logits, state = model(x, state)
            nats += F.cross_entropy(logits[0], y[0], reduction="sum").item()
    return {"nats_per_char": nats / (len(held) - 1), "steps": step, "seconds": seconds}
