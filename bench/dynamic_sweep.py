"""Dynamic evaluation's settings, chosen on validation text only.

Scores a trained run's validation split statically and with dynamic evaluation for each (lr,
decay, window) in the grid, one line each, then reports the best setting's figures on the last
10% (validation + test) and on the test split alone, beside the static ones. The defaults in
config.DynamicConfig come from this sweep (BENCHMARKS.md, "Dynamic evaluation").

    python bench/dynamic_sweep.py RUN                       # the default grid
    python bench/dynamic_sweep.py RUN --lr 0.01 0.03 --decay 0 --window 64
    python bench/dynamic_sweep.py RUN --only                # the defaults alone, on every split

Each line is also appended to bench/results/dynamic_sweep.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--decay", type=float, nargs="+", default=[0.0, 0.001, 0.01])
    parser.add_argument("--window", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--only", action="store_true", help="the DynamicConfig defaults alone")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--chars",
        type=int,
        default=0,
        help="choose on the first N characters of validation (0 = all of it)",
    )
    args = parser.parse_args()

    import numpy as np
    import torch

    import nextchar
    from nextchar.config import DynamicConfig
    from nextchar.runfolder import RunFolder

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}", flush=True)
    model = nextchar.load(args.run)
    config = model.config
    data = RunFolder(args.run).split_data(config)
    val, test = data.split("val"), data.split("test")
    last10 = np.concatenate([val, test])
    choose = val[: args.chars] if args.chars else val  # the grid is judged on this part of val
    static = {
        name: model.evaluate_ids(ids, "fp32").nats_per_char
        for name, ids in (("val", choose), ("test", test), ("last10", last10))
    }
    print(
        f"static: val {static['val']:.4f}, test {static['test']:.4f}, last 10% {static['last10']:.4f} "
        f"nats/char",
        flush=True,
    )
    grid = (
        [DynamicConfig()]
        if args.only
        else [
            DynamicConfig(lr, decay, window)
            for lr, decay, window in itertools.product(args.lr, args.decay, args.window)
        ]
    )
    out = Path(__file__).parent / "results" / "dynamic_sweep.jsonl"
    out.parent.mkdir(exist_ok=True)
    results = []
    for setting in grid:
        started = time.perf_counter()
        score = model.evaluate_ids(choose, dynamic=setting).nats_per_char
        seconds = time.perf_counter() - started
        results.append((score, setting))
        record = {
            "run": args.run,
            "lr": setting.lr,
            "decay": setting.decay,
            "window": setting.window,
            "val_static": round(static["val"], 4),
            "val_dynamic": round(score, 4),
            "val_chars": len(choose),
            "chars_per_s": round(len(choose) / seconds),
        }
        print(
            f"lr {setting.lr:g} decay {setting.decay:g} window {setting.window}: val {score:.4f} "
            f"(x{score / static['val']:.3f}) | {len(choose) / seconds:,.0f} chars/s",
            flush=True,
        )
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
    best = min(results, key=lambda r: r[0])[1]
    dynamic = {
        name: model.evaluate_ids(ids, dynamic=best).nats_per_char
        for name, ids in (("test", test), ("last10", last10))
    }
    print(
        f"best on val: lr {best.lr:g} decay {best.decay:g} window {best.window}; "
        f"test {dynamic['test']:.4f} (static {static['test']:.4f}, x{dynamic['test'] / static['test']:.3f}), "
        f"last 10% {dynamic['last10']:.4f} (static {static['last10']:.4f}, "
        f"x{dynamic['last10'] / static['last10']:.3f})",
        flush=True,
    )


if __name__ == "__main__":
    main()
