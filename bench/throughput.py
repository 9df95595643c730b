"""Training and evaluation throughput of nextchar against a bare PyTorch loop, same run.

    python bench/throughput.py            # 2x256 and 2x512 LSTM, batch 64 x 128
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/throughput.py   # as on a CPU without AMX

Floors: `nextchar train` with its default (`--precision auto`, timed on this machine) >= 0.97x the
faster of a bare fp32 loop and the same loop under bf16 autocast; `--precision fp32` >= 0.95x the
bare fp32 loop; evaluation >= 3x training chars/s. Also reports GFLOP/s against a large fp32
matmul timed in the same run. The two training floors are judged on the median of each round's
own ratio (nextchar's run against the bare loop run just before it): the host's speed drifts
between rounds by more than the floors' margins, and a ratio of medians mixes rounds.

The bare loops run as a plain script does, with glibc's malloc as it comes; `nextchar` keeps the
memory a step frees (allocator.py). So each round also times the bare loop in the precision
`auto` chose in a child process that keeps freed memory too: the ratio to it is nextchar's loop
alone, without the allocator's share (no floor).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, metrics, nextchar, report  # noqa: E402
from nextchar.allocator import keep_freed_memory  # noqa: E402
from nextchar.config import ModelConfig  # noqa: E402
from nextchar.corpus import bundled_path  # noqa: E402
from nextchar.evaluate import score_ids  # noqa: E402
from nextchar.metrics import TrainRecord  # noqa: E402
from nextchar.model import CharRNN, flops_per_char  # noqa: E402

B, T, EMBED, V = 64, 128, 64, 65


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * 2048**3 / statistics.median(times) / 1e9


class Bare(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(V, EMBED)
        self.lstm = nn.LSTM(EMBED, hidden, 2, batch_first=True)
        self.head = nn.Linear(hidden, V)

    def forward(self, x, state):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


def bare_loop(hidden: int, steps: int, tokens: np.ndarray, precision: str = "fp32") -> float:
    """chars/s of the plainest loop: contiguous batches, carried detached state, Adam; `bf16`
    runs the forward under CPU bf16 autocast, the state carried in the dtype it comes out in."""
    torch.manual_seed(0)
    model = Bare(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    stream = len(tokens) // B
    data = torch.from_numpy(tokens[: stream * B].astype(np.int64)).view(B, stream)
    state = None
    times = []
    for step in range(steps):
        started = time.perf_counter()
        offset = (step * T) % (stream - T - 1)
        x, y = data[:, offset : offset + T], data[:, offset + 1 : offset + T + 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = tuple(s.detach() for s in state)
        times.append(time.perf_counter() - started)
    return B * T / statistics.median(times[3:])


def nextchar_loop(hidden: int, steps: int, folder: Path, precision: str) -> tuple[float, str]:
    """chars/s of `nextchar train` (its real loop: data, clipping, schedule, logging, progress
    bar) and the precision it ran in."""
    run = folder / f"run{hidden}"
    nextchar(
        "train",
        "--out",
        run,
        "--force",
        "--steps",
        steps,
        "--hidden",
        hidden,
        "--layers",
        2,
        "--precision",
        precision,
        "--embed",
        EMBED,
        "--batch-size",
        B,
        "--seq-len",
        T,
        "--eval-every",
        10**6,
        "--log-every",
        2,
        "--sample-chars",
        0,
        "--checkpoint-every",
        10**6,
        "--eval-chars",
        2,
        env={"NEXTCHAR_PROGRESS": "1"},
    )
    speeds = [r.chars_per_s for r in metrics(run) if isinstance(r, TrainRecord)][2:]
    chosen = json.loads((run / "machine.json").read_text())["train_precision"]["value"]
    return statistics.median(speeds), chosen


def eval_speed(hidden: int, tokens: np.ndarray, precision: str) -> float:
    """chars/s of the evaluation that training and `nextchar eval` run (score_ids), in a child
    process that keeps freed memory as the command line does (allocator.py): this process's
    bare loops run with the allocator as a plain script has it."""
    return _child("--eval-child", hidden, precision)


def kept_bare_loop(hidden: int, steps: int, precision: str) -> float:
    """bare_loop's chars/s in a child process that keeps freed memory, as nextchar does."""
    return _child("--bare-child", hidden, steps, precision)


def _child(*args) -> float:
    """This script run again with `args`: the chars/s that child prints."""
    command = [sys.executable, __file__, *map(str, args)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def eval_child(hidden: int, tokens: np.ndarray, precision: str) -> float:
    keep_freed_memory()
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=V, hidden=hidden, layers=2, embed=EMBED))
    ids = tokens[:200_000]
    score_ids(model, ids[:20_000], precision=precision)
    started = time.perf_counter()
    score_ids(model, ids, precision=precision)
    return (len(ids) - 1) / (time.perf_counter() - started)


def paired(runs: list[float], references: list[float]) -> float:
    """The median over rounds of each round's ratio to the reference run in that round."""
    return statistics.median(run / ref for run, ref in zip(runs, references))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--bare-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--eval-child", nargs=2, metavar=("HIDDEN", "PRECISION"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    text = bundled_path().read_text(encoding="utf-8")
    symbols = sorted(set(text))
    tokens = np.array([symbols.index(c) for c in text[:400_000]], dtype=np.uint8)
    if args.eval_child:
        print(eval_child(int(args.eval_child[0]), tokens, args.eval_child[1]))
        return
    if args.bare_child:
        keep_freed_memory()
        hidden, steps, precision = args.bare_child
        print(bare_loop(int(hidden), int(steps), tokens, precision))
        return
    print(f"machine: {machine()}")
    peak = matmul_gflops()
    report("matmul 2048^3 fp32", peak, "GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NEXTCHAR_CACHE_DIR"] = str(Path(tmp) / "cache")  # `auto` measures afresh
        for hidden in args.sizes:
            bare, bare16, fp32, auto, kept, chosen = [], [], [], [], [], set()
            for _ in range(args.rounds):  # interleaved, so drift in machine load hits all four
                bare.append(bare_loop(hidden, args.steps, tokens))
                bare16.append(bare_loop(hidden, args.steps, tokens, "bf16"))
                fp32.append(nextchar_loop(hidden, args.steps, Path(tmp), "fp32")[0])
                cps, precision = nextchar_loop(hidden, args.steps, Path(tmp), "auto")
                auto.append(cps)
                chosen.add(precision)
                kept.append(kept_bare_loop(hidden, args.steps, precision))
            bare_cps, bare16_cps, fp32_cps, auto_cps = map(
                statistics.median, (bare, bare16, fp32, auto)
            )
            flops = flops_per_char(ModelConfig(vocab_size=V, hidden=hidden, layers=2, embed=EMBED))
            faster, faster_runs, faster_name = max(
                (bare_cps, bare, "bare fp32"), (bare16_cps, bare16, "bare bf16"), key=lambda f: f[0]
            )
            report(f"bare fp32 loop 2x{hidden} B{B} T{T}", bare_cps, "chars/s")
            report(f"bare bf16-autocast loop 2x{hidden} B{B} T{T}", bare16_cps, "chars/s")
            report(
                f"nextchar train --precision fp32 2x{hidden}",
                fp32_cps,
                "chars/s",
                reference=bare_cps,
                ref_name="bare fp32 loop",
            )
            report(
                f"nextchar train --precision fp32 2x{hidden} / bare fp32 loop, round by round",
                paired(fp32, bare),
                "x (median)",
                floor=0.95,
            )
            report(
                f"nextchar train --precision fp32 2x{hidden} GFLOP/s",
                fp32_cps * flops / 1e9,
                "GFLOP/s",
                reference=peak,
                ref_name="matmul",
            )
            report(
                f"nextchar train (default: auto chose {'/'.join(sorted(chosen))}) 2x{hidden}",
                auto_cps,
                "chars/s",
                reference=faster,
                ref_name=f"faster bare loop ({faster_name})",
            )
            report(
                f"nextchar train (default) 2x{hidden} / {faster_name} loop, round by round",
                paired(auto, faster_runs),
                "x (median)",
                floor=0.97,
            )
            report(
                f"bare {'/'.join(sorted(chosen))} loop keeping freed memory 2x{hidden}",
                statistics.median(kept),
                "chars/s",
            )
            report(
                f"nextchar train (default) 2x{hidden} / that loop, round by round",
                paired(auto, kept),
                "x (median)",
            )
            for precision, train_cps in (("fp32", fp32_cps), ("auto", auto_cps)):
                evals = eval_speed(hidden, tokens, precision)
                report(
                    f"evaluation --precision {precision} 2x{hidden}",
                    evals,
                    "chars/s",
                    reference=train_cps,
                    ref_name=f"nextchar train {precision}",
                    ratio_floor=3.0,
                )
    finish()


if __name__ == "__main__":
    main()
