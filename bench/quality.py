"""Quality at a wall-clock budget: `nextchar train --time BUDGET` with its defaults, scored on the
last 10% of the text (its val and test splits, never trained on), against the plainest fp32 loop
(bench/reference_loop.py: 2x256 for budgets up to 6 minutes, else 2x512; batch 32 x 64, AdamW,
cosine, clip 1) trained for the same budget less 10 s in the same run.

    python bench/quality.py --time 3m                  # ratio <= 0.99; floor 1.50 nats/char
    python bench/quality.py --time 3m --threads 1      # both sides on one thread
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/quality.py --time 3m   # a CPU without AMX
    python bench/quality.py --time 10m --keep RUN      # and keep its run folder
    python bench/quality.py --time 3m --text FILE --no-reference -- --hidden 384   # a sweep point

Prints the run's figures and appends a JSON line to bench/results/quality.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, metrics, nextchar, report  # noqa: E402
from nextchar.metrics import EvalRecord  # noqa: E402
from reference_loop import train_and_score  # noqa: E402

FLOORS = {180.0: 1.50}  # nats/char on the bundled corpus, on the CPU the defaults were tuned on
RATIO_FLOOR = 0.99  # nextchar / the same-run plain loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", default="3m")
    parser.add_argument(
        "--text", default=None, help="corpus (default: the bundled tinyshakespeare)"
    )
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--threads", type=int, default=0, help="threads for both sides (0: torch's)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the plain loop")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="copy the trained run folder here (to score it later)",
    )
    parser.add_argument("extra", nargs="*", help="flags passed to nextchar train (after --)")
    args = parser.parse_args()
    if args.keep and args.keep.exists():  # refuse now, not after the whole training run
        parser.error(f"--keep {args.keep} already exists")
    import torch

    from nextchar.fields import parse_duration

    budget = parse_duration(args.time)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}", flush=True)
    threads = ["--threads", args.threads] if args.threads else []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        inputs = [args.text] if args.text else []
        started = time.perf_counter()
        proc = nextchar(
            "train",
            *inputs,
            "--out",
            run,
            "--time",
            args.time,
            "--json",
            "--quiet",
            *threads,
            *args.extra,
        )
        wall = time.perf_counter() - started
        result = json.loads(proc.stdout)
        config = json.loads((run / "config.json").read_text())
        chosen = json.loads((run / "machine.json").read_text())
        curve = [
            [r.step, round(r.val_loss, 4)]
            for r in metrics(run)
            if isinstance(r, EvalRecord) and r.val_loss is not None
        ]
        if args.keep:
            shutil.copytree(run, args.keep)
    val, test = result["val"], result["test"]
    last10 = (val["nats_per_char"] * val["chars"] + test["nats_per_char"] * test["chars"]) / (
        val["chars"] + test["chars"]
    )
    native = not chosen["machine"]["isa_caps"] and not args.threads
    floor = FLOORS.get(budget) if not args.text and native else None  # the native CPU's floor
    report(
        f"train --time {args.time} wall clock (process)",
        wall,
        "s",
        floor=budget * 1.05 + 15,
        floor_is_max=True,
    )
    report("val", val["nats_per_char"], "nats/char")
    report("test", test["nats_per_char"], "nats/char")
    report("last 10% (val+test)", last10, "nats/char", floor=floor, floor_is_max=True)
    report("last 10% (val+test)", last10 / math.log(2), "bits/char")
    print(
        f"chose: {config['model']['layers']}x{config['model']['hidden']} {config['model']['cell']}, "
        f"lr {config['train']['lr']:g}, dropout {config['model']['dropout']:g}, "
        f"precision {chosen['train_precision']['value']}, {result['steps']} steps",
        flush=True,
    )
    reference = None
    if not args.no_reference:
        from nextchar.corpus import bundled_path

        text = Path(args.text or bundled_path()).read_text(encoding="utf-8")
        hidden, lr = (256, 3e-3) if budget <= 360 else (512, 2e-3)
        reference = train_and_score(text, hidden, budget - 10, lr)
        report(
            f"plain fp32 loop 2x{hidden}, {budget - 10:.0f} s, {reference['steps']} steps, "
            "last 10%",
            reference["nats_per_char"],
            "nats/char",
        )
        report(
            "nextchar / plain loop",
            last10,
            "nats/char",
            reference=reference["nats_per_char"],
            ref_name="plain loop",
            ratio_floor=RATIO_FLOOR,
            floor_is_max=True,
        )
    record = {
        "time": args.time,
        "text": args.text or "tinyshakespeare",
        "extra": args.extra,
        "label": args.label,
        "threads": args.threads,
        "machine": machine(),
        "isa_caps": chosen["machine"]["isa_caps"],
        "last10_nats": round(last10, 4),
        "reference_nats": round(reference["nats_per_char"], 4) if reference else None,
        "val_nats": round(val["nats_per_char"], 4),
        "test_nats": round(test["nats_per_char"], 4),
        "steps": result["steps"],
        "wall": round(wall, 1),
        "val_curve": curve,
        "model": config["model"],
        "train": config["train"],
    }
    out = Path(__file__).parent / "results" / "quality.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    finish()


if __name__ == "__main__":
    main()
