"""bf16 autocast against fp32 at the same step count: the same run trained twice on the bundled
tinyshakespeare (2x256 LSTM, embedding 64, batch 32 x 64, the wsd schedule), then the
bf16-trained model scored on the validation split in both precisions.

    python bench/precision_loss.py                # 300 steps each
    python bench/precision_loss.py --steps 100 -- --threads 1

Prints the validation loss of each run and their ratio (floor: within 1%), the largest relative
gap between their logged training losses, each run's wall clock, and the two scores of the bf16
model. Exit status 1 when the floor is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, metrics, nextchar, report  # noqa: E402
from nextchar.metrics import TrainRecord  # noqa: E402

FLAGS = [
    "--cell",
    "lstm",
    "--layers",
    "2",
    "--hidden",
    "256",
    "--embed",
    "64",
    "--batch-size",
    "32",
    "--seq-len",
    "64",
    "--log-every",
    "10",
    "--sample-chars",
    "0",
    "--quiet",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("extra", nargs="*", help="more `nextchar train` flags, after --")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        runs, walls = {}, {}
        for precision in ("fp32", "bf16"):
            runs[precision] = Path(tmp) / precision
            started = time.perf_counter()
            nextchar(
                "train",
                "--out",
                runs[precision],
                *FLAGS,
                "--steps",
                args.steps,
                "--eval-every",
                args.steps,
                "--precision",
                precision,
                *args.extra,
            )
            walls[precision] = time.perf_counter() - started
        val = {p: metrics(r)[-1].val.nats_per_char for p, r in runs.items()}  # the FinalRecord
        train = {
            p: [m.loss for m in metrics(r) if isinstance(m, TrainRecord)] for p, r in runs.items()
        }
        scored = {
            p: json.loads(nextchar("eval", runs["bf16"], "--precision", p, "--json").stdout)
            for p in ("fp32", "bf16")
        }
    for precision in ("fp32", "bf16"):
        print(
            f"{args.steps} steps --precision {precision}: val {val[precision]:.4f} nats/char, "
            f"wall clock (process) {walls[precision]:.1f} s"
        )
    report(
        "val bf16 / fp32",
        val["bf16"],
        "nats/char",
        reference=val["fp32"],
        ref_name="fp32",
        ratio_floor=1.01,
        floor_is_max=True,
    )
    gap = max(abs(a - b) / b for a, b in zip(train["bf16"], train["fp32"]))
    print(f"largest relative gap between the logged training losses: {gap:.2%}")
    for precision in ("fp32", "bf16"):
        print(
            f"the bf16-trained model scored in {precision}: "
            f"{scored[precision]['bits_per_char']:.4f} bits/char"
        )
    finish()


if __name__ == "__main__":
    main()
