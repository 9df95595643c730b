"""The matrix-vector products one sampling step of a 2x512 LSTM is made of, timed alone: a step
of one stream reads every weight once, so these times (and the bytes they read) bound it.

    python bench/kernels.py               # PyTorch's default thread count (both cores here)
    python bench/kernels.py --threads 1

Shapes (rows x columns): 2048 x 512 is layer 0's recurrent product, 2048 x 1024 layer 1's product
over [input; own state] (sample.py's StepModel). For each: fp32 `addmv`, bf16 `mv`, and
PyTorch's int8 weight-only kernel (`torch._weight_int8pack_mm`, bf16 activations, one scale per
row), the median of many calls. Then the fp32 bandwidth of the larger product and the step rate
it allows an fp32 2x512 LSTM (vocab 65, embedding 64) with no other cost.
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

SHAPES = ((2048, 512), (2048, 1024))


def median_us(fn, calls: int = 200, rounds: int = 15) -> float:
    for _ in range(calls):
        fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - started) / calls)
    return statistics.median(times) * 1e6


def kernel_us(rows: int, cols: int) -> dict[str, float]:
    """Median microseconds of each format's product for a (rows, cols) weight and one vector."""
    weight, x, bias = torch.randn(rows, cols), torch.randn(cols), torch.randn(rows)
    w16, x16 = weight.bfloat16(), x.bfloat16()
    scale = weight.abs().amax(1) / 127
    w8 = torch.round(weight / scale[:, None]).to(torch.int8).contiguous()
    s16, a16 = scale.bfloat16(), x16[None].contiguous()
    with torch.inference_mode():
        return {
            "fp32 addmv": median_us(lambda: torch.addmv(bias, weight, x)),
            "bf16 mv": median_us(lambda: torch.mv(w16, x16)),
            "int8 weight-only": median_us(lambda: torch._weight_int8pack_mm(a16, w8, s16)),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    torch.manual_seed(0)
    times = {shape: kernel_us(*shape) for shape in SHAPES}
    for (rows, cols), us in times.items():
        print(f"{rows}x{cols}: " + ", ".join(f"{name} {t:.0f} us" for name, t in us.items()))
    rows, cols = SHAPES[-1]
    bandwidth = rows * cols * 4 / (times[rows, cols]["fp32 addmv"] * 1e-6) / 1e9
    step_bytes = 4 * (65 * 4 * 512 + 2048 * 512 + 2048 * 1024 + 65 * 512)  # table, products, head
    print(
        f"fp32 {rows}x{cols} addmv reads {bandwidth:.1f} GB/s; an fp32 2x512 step reads "
        f"{step_bytes / 1e6:.1f} MB: at most {bandwidth * 1e9 / step_bytes:,.0f} steps/s"
    )


if __name__ == "__main__":
    main()
