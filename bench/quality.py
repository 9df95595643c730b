"""Quality at a wall-clock budget: `nextchar train --time BUDGET` with its defaults, scored on the
last 10% of the text (its val and test splits, never trained on).

    python bench/quality.py --time 3m                  # floor 1.50 nats/char
    python bench/quality.py --time 10m                 # floor 1.40 nats/char
    python bench/quality.py --time 3m --text FILE -- --hidden 384 --lr 3e-3   # a sweep point

Prints the run's figures and appends a JSON line to bench/results/quality.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, nextchar, report  # noqa: E402

FLOORS = {180.0: 1.50, 600.0: 1.40}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", default="3m")
    parser.add_argument("--text", default=None, help="corpus (default: the bundled tinyshakespeare)")
    parser.add_argument("--label", default="")
    parser.add_argument("extra", nargs="*", help="flags passed to nextchar train (after --)")
    args = parser.parse_args()
    from nextchar.config import parse_duration

    budget = parse_duration(args.time)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        inputs = [args.text] if args.text else []
        started = time.perf_counter()
        proc = nextchar("train", *inputs, "--out", run, "--time", args.time, "--json", "--quiet", *args.extra)
        wall = time.perf_counter() - started
        result = json.loads(proc.stdout)
        config = json.loads((run / "config.json").read_text())
        curve = [[r["step"], round(r["val_loss"], 4)] for r in
                 (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
                 if r["kind"] == "eval" and "val_loss" in r]
    val, test = result["val"], result["test"]
    last10 = (val["nats_per_char"] * val["chars"] + test["nats_per_char"] * test["chars"]) / (
        val["chars"] + test["chars"])
    floor = FLOORS.get(budget) if not args.text else None
    report(f"train --time {args.time} wall clock (process)", wall, "s", floor=budget * 1.05 + 15,
           floor_is_max=True)
    report("val", val["nats_per_char"], "nats/char")
    report("test", test["nats_per_char"], "nats/char")
    report("last 10% (val+test)", last10, "nats/char", floor=floor, floor_is_max=True)
    report("last 10% (val+test)", last10 / math.log(2), "bits/char")
    record = {"time": args.time, "text": args.text or "tinyshakespeare", "extra": args.extra,
              "label": args.label, "last10_nats": round(last10, 4), "val_nats": round(val["nats_per_char"], 4),
              "test_nats": round(test["nats_per_char"], 4), "steps": result["steps"],
              "wall": round(wall, 1), "val_curve": curve, "model": config["model"],
              "train": config["train"]}
    out = Path(__file__).parent / "results" / "quality.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    finish()


if __name__ == "__main__":
    main()
