"""What the regularisers and weight averaging cost per training step, same process, interleaved.

    taskset -c 1 python bench/regularisation.py --threads 1            # 2x512, batch 32 x 64
    taskset -c 1 python bench/regularisation.py --threads 1 --precision fp32

Each variant runs nextchar's training step (CharRNN forward with carried state, cross-entropy,
backward, clip, AdamW, and the weight average's update where it averages) on the same shapes;
the variants take turns, a few steps each, for --rounds rounds; a variant's ratio is the median
over rounds of its speed against its reference's in the same round (the same model without the
feature), which cancels most of the drift of a shared machine. Floor (issue 14):
training chars/s with the regularisers >= 0.9x without them.

With --threads 1 the clock is the thread's CPU time (time.thread_time), so that other processes
on a shared machine, which take the core away for whole time slices, do not count; with more
threads it is the wall clock.
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
from common import finish, machine, report  # noqa: E402
from nextchar.averaging import WeightAverage  # noqa: E402
from nextchar.config import ModelConfig  # noqa: E402
from nextchar.devices import autocast  # noqa: E402
from nextchar.model import CharRNN, detach_hidden  # noqa: E402

# name -> (model options, average, reference name); the values of the A/B in BENCHMARKS.md
D = {"dropout": 0.3}
VARIANTS = {
    "plain": ({}, None, None),
    "weight drop 0.25": ({"weight_drop": 0.25}, None, "plain"),
    "ema average": ({}, "ema", "plain"),
    "dropout 0.3": (D, None, "plain"),
    "dropout 0.3 locked": ({**D, "locked_dropout": True}, None, "dropout 0.3"),
    "dropout 0.3, weight drop 0.25": ({**D, "weight_drop": 0.25}, None, "dropout 0.3"),
    "dropout 0.3, embed drop 0.1": ({**D, "embed_drop": 0.1}, None, "dropout 0.3"),
    "dropout 0.3, ema average": (D, "ema", "dropout 0.3"),
    "all four": (
        {**D, "locked_dropout": True, "weight_drop": 0.25, "embed_drop": 0.1},
        "ema",
        "dropout 0.3",
    ),
}


class Stepper:
    """One variant's model, optimizer, average and carried state; `step()` is one training step."""

    def __init__(
        self, config: ModelConfig, average: str | None, batch: int, seq_len: int, precision: str
    ):
        torch.manual_seed(0)
        self.model = CharRNN(config).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.average = WeightAverage(self.model, average, 0.999) if average else None
        self.ids = torch.randint(config.vocab_size, (batch, seq_len + 1))
        self.precision = precision
        self.hidden = None

    def step(self) -> None:
        x, y = self.ids[:, :-1], self.ids[:, 1:]
        with autocast(self.precision, torch.device("cpu")):
            logits, hidden = self.model(x, self.hidden)  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        self.hidden = detach_hidden(hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# {machine()}; {args.layers}x{args.hidden} LSTM, embed {args.embed}, batch "
        f"{args.batch} x {args.seq_len}, {args.precision}, {torch.get_num_threads()} thread(s), "
        f"{args.rounds} rounds of {args.steps} steps, "
        f"{'CPU time' if torch.get_num_threads() == 1 else 'wall clock'}",
        flush=True,
    )
    steppers = {}
    for name, (options, average, _) in VARIANTS.items():
        config = ModelConfig(
            vocab_size=65, embed=args.embed, hidden=args.hidden, layers=args.layers, **options
        )
        steppers[name] = Stepper(config, average, args.batch, args.seq_len, args.precision)
        for _ in range(2):  # warm-up: oneDNN primitives, optimizer state
            steppers[name].step()
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    seconds: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, stepper in steppers.items():
            started = clock()
            for _ in range(args.steps):
                stepper.step()
            seconds[name].append((clock() - started) / args.steps)
    chars = args.batch * args.seq_len
    speed = {name: chars / statistics.median(times) for name, times in seconds.items()}
    for name, (_, _, reference) in VARIANTS.items():
        if reference is None:
            report(f"{name}", speed[name], "chars/s")
            continue
        ratio = statistics.median(r / t for t, r in zip(seconds[name], seconds[reference]))
        # the median per-round ratio, as a speed against the reference's median speed
        report(
            name,
            ratio * speed[reference],
            "chars/s",
            reference=speed[reference],
            ref_name=reference,
            ratio_floor=0.9,
        )
    finish()


if __name__ == "__main__":
    main()
