"""CPU training with dropout: nextchar's masks (model.dropout: a `torch.rand` comparison, one
fused recurrent call per layer) against PyTorch's own (`nn.LSTM`'s inter-layer dropout and
`F.dropout`, which draw their masks with `bernoulli_`), on the model where it matters: a 2x768
LSTM, dropout 0.3, batch 32 x 64, bf16 autocast, a full training step (forward, loss, backward,
clipping, AdamW).

    python bench/dropout_masks.py                  # 6 rounds of 5 steps each, interleaved
    python bench/dropout_masks.py --rounds 2 --steps 2 --precision fp32

Prints the median ms per step of each and their ratio, then the mask draw alone on one
32 x 64 x 768 activation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, median_time, report  # noqa: E402
from nextchar.config import ModelConfig  # noqa: E402
from nextchar.devices import autocast  # noqa: E402
from nextchar.model import CharRNN, detach_hidden, dropout  # noqa: E402

V, B, T = 65, 32, 64


def torch_masks_forward(model: CharRNN, idx, hidden):
    """CharRNN's forward as it was: the stacked nn.LSTM with its own dropout, then F.dropout."""
    out, hidden = model.rnn(model.inputs(idx), hidden)  # (B, T, H)
    return model.head(F.dropout(out, model.config.dropout, True)), hidden


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and variant")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, embed=64, hidden=args.hidden, layers=2, dropout=0.3)
    model = CharRNN(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(V, (B, T + 1))
    forwards = {
        "torch masks (bernoulli_)": lambda idx, h: torch_masks_forward(model, idx, h),
        "nextchar masks (torch.rand)": model,
    }
    hidden = {name: None for name in forwards}

    def step(name: str) -> None:
        with autocast(args.precision, torch.device("cpu")):
            logits, h = forwards[name](ids[:, :-1], hidden[name])
            loss = F.cross_entropy(logits.reshape(-1, V).float(), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        hidden[name] = detach_hidden(h)

    for name in forwards:  # warm-up
        step(name)
    times = {name: [] for name in forwards}
    for _ in range(args.rounds):
        for name in forwards:
            started = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            times[name].append((time.perf_counter() - started) / args.steps * 1000)
    old, new = (statistics.median(times[name]) for name in forwards)
    label = f"2x{args.hidden} LSTM step, dropout 0.3, batch {B} x {T}, {args.precision}"
    report(f"{label}, torch masks", old, "ms")
    report(f"{label}, nextchar masks", new, "ms", reference=old, ref_name="torch masks")
    x = torch.randn(B, T, args.hidden)
    report(
        "F.dropout alone, 32 x 64 x H", median_time(lambda: F.dropout(x, 0.3, True)) * 1000, "ms"
    )
    report(
        "model.dropout alone, 32 x 64 x H", median_time(lambda: dropout(x, 0.3, True)) * 1000, "ms"
    )


if __name__ == "__main__":
    main()
