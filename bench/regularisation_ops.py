"""What the regularisers and weight averaging add to a training step, op by op, on one thread.

    taskset -c 1 python bench/regularisation_ops.py --rounds 15

A shared machine makes whole-step timings of two variants differ by more than the few percent a
regulariser costs (bench/regularisation.py), so this times only the work each one adds, in the
thread's CPU time, against a plain training step timed in the same round: weight drop's masks of
every layer's W_hh with the multiply and its backward; the EMA update of all the weights; a
dropout mask and multiply of one layer's output, and the same locked (one mask per stream).
Prints the median over rounds of each as a share of the plain step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402
from nextchar.averaging import WeightAverage  # noqa: E402
from nextchar.config import ModelConfig  # noqa: E402
from nextchar.model import GATES, keep_mask  # noqa: E402
from regularisation import Stepper  # noqa: E402


def cpu_seconds(fn, repeat: int) -> float:
    started = time.thread_time()
    for _ in range(repeat):
        fn()
    return (time.thread_time() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    H, B, T = args.hidden, args.batch, args.seq_len
    config = ModelConfig(vocab_size=65, embed=64, hidden=H, layers=args.layers)
    plain = Stepper(config, None, B, T, "bf16")
    w_hh = torch.randn(GATES[config.cell] * H, H, requires_grad=True)
    grad = torch.randn_like(w_hh)

    def weight_drop() -> None:
        for _ in range(args.layers):
            (w_hh * keep_mask(w_hh.shape, 0.25, "cpu")).backward(grad)

    average = WeightAverage(plain.model, "ema", 0.999)
    average.update(plain.model)
    x = torch.randn(B, T, H)
    work = {
        "weight drop 0.25 (all layers)": weight_drop,
        "ema update": lambda: average.update(plain.model),
        "dropout 0.3, one layer's output": lambda: x * keep_mask(x.shape, 0.3, "cpu"),
        "locked dropout 0.3, one layer's output": lambda: x * keep_mask((B, 1, H), 0.3, "cpu"),
    }
    for _ in range(2):
        plain.step()
    shares: dict[str, list[float]] = {name: [] for name in work}
    steps = []
    for _ in range(args.rounds):
        step = cpu_seconds(plain.step, 2)
        steps.append(step)
        for name, fn in work.items():
            shares[name].append(cpu_seconds(fn, 5) / step)
    print(
        f"# {machine()}; {args.layers}x{H} LSTM, batch {B} x {T}, bf16, 1 thread, CPU time, "
        f"{args.rounds} rounds; plain step {statistics.median(steps) * 1e3:.0f} ms (median)"
    )
    for name, values in shares.items():
        print(
            f"{name}: {statistics.median(values):.1%} of a plain step "
            f"(rounds {min(values):.1%} to {max(values):.1%})",
            flush=True,
        )


if __name__ == "__main__":
    main()
