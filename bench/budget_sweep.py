"""The sweep behind the budget rule (src/nextchar/budget.py): which width is best for a given
amount of compute, in parameter-characters, whatever the machine's speed.

A run's quality after C characters does not depend on how fast the machine is, so each point is
trained for a fixed number of steps: the characters that a budget of `--level` parameter-chars
buys a model of that width (level / parameters). A compute level is what a machine with
throughput K (parameter-chars/s, as `nextchar train` measures it) gets from a --time budget:
level = K x seconds x budget.TRAIN_SHARE. The best width per level, chosen on the validation
split, fixes CHARS_PER_PARAM; the last 10% (val+test) is reported beside it, never used.

    python bench/budget_sweep.py --level 2.7e12 --widths 192 256 320 384
    python bench/budget_sweep.py --level 1.8e13 --widths 512 768 -- --dropout 0.3 --weight-decay 0.2
    python bench/budget_sweep.py --level 3e12 --batch-size 16 --widths 256 320 -- --lr 2e-3
    python bench/budget_sweep.py --probe            # K on this machine (the rule's measurement)

Each point appends a JSON line to bench/results/budget_sweep.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, nextchar  # noqa: E402


def params_of(width: int, vocab: int = 65, **model) -> int:
    from nextchar.budget import RUN_DEFAULTS, num_params
    from nextchar.config import ModelConfig

    base = {k: v for k, v in RUN_DEFAULTS.items() if k in ("cell", "layers", "embed")}
    return num_params(ModelConfig(vocab_size=vocab, hidden=width, **{**base, **model}))


def probe() -> None:
    """K as the budget rule measures it here (fresh, not cached)."""
    import torch

    from nextchar import devices
    from nextchar.budget import PROBE_WIDTH, RUN_DEFAULTS
    from nextchar.config import ModelConfig

    shape = ModelConfig(
        vocab_size=65,
        hidden=PROBE_WIDTH,
        **{k: v for k, v in RUN_DEFAULTS.items() if k in ("cell", "layers", "embed")},
    )
    cpu = torch.device("cpu")
    timings = devices.train_step_seconds(shape, 32, 64, cpu, devices.precision_candidates(cpu))
    best = min(timings, key=timings.get)
    k = 32 * 64 / timings[best] * params_of(PROBE_WIDTH)
    print(
        f"probe 2x{PROBE_WIDTH}: {', '.join(f'{p} {32 * 64 / s:,.0f} chars/s' for p, s in timings.items())}"
        f" -> K = {k:.3g} parameter-chars/s ({best})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--level", type=float, help="compute level in parameter-characters")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 384, 512])
    parser.add_argument("--text", default=None)
    parser.add_argument("--label", default="")
    parser.add_argument("--batch-size", type=int, default=32, help="streams (32 as in the rule)")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("extra", nargs="*", help="flags passed to nextchar train (after --)")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    if args.probe:
        probe()
        return
    out = Path(__file__).parent / "results" / "budget_sweep.jsonl"
    out.parent.mkdir(exist_ok=True)
    for width in args.widths:
        params = params_of(width)
        chars_per_step = args.batch_size * 64
        steps = max(1, round(args.level / params / chars_per_step))
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            inputs = [args.text] if args.text else []
            started = time.perf_counter()
            proc = nextchar(
                "train",
                *inputs,
                "--out",
                run,
                "--steps",
                steps,
                "--hidden",
                width,
                "--json",
                "--quiet",
                "--sample-chars",
                0,
                "--batch-size",
                args.batch_size,
                *args.extra,
            )
            wall = time.perf_counter() - started
            result = json.loads(proc.stdout)
            config = json.loads((run / "config.json").read_text())
        val, test = result["val"], result["test"]
        last10 = (val["nats_per_char"] * val["chars"] + test["nats_per_char"] * test["chars"]) / (
            val["chars"] + test["chars"]
        )
        record = {
            "level": args.level,
            "width": width,
            "params": params,
            "steps": steps,
            "batch_size": args.batch_size,
            "chars_per_param": round(steps * chars_per_step / params, 3),
            "extra": args.extra,
            "text": args.text or "tinyshakespeare",
            "label": args.label,
            "val_nats": round(val["nats_per_char"], 4),
            "last10_nats": round(last10, 4),
            "wall": round(wall, 1),
            "train": config["train"],
        }
        print(
            f"level {args.level:.2g} width {width} ({params / 1e6:.2f} M params, {steps} steps, "
            f"{record['chars_per_param']:.2f} chars/param): val {val['nats_per_char']:.4f} "
            f"nats/char, last 10% {last10:.4f} | {wall:.0f} s",
            flush=True,
        )
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
