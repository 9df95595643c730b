"""Start-up time of `nextchar --help`, the cost of `auto`'s measuring, and peak memory of a 2x512
training run.

    python bench/startup_memory.py

Floors: --help under 0.5 s (median of 7); everything `auto` times for a default `--time 3m` run
on the bundled corpus (the budget's width, training and evaluation precision) and for sampling one
and 64 streams under 2 s on first use and 50 ms once cached; peak RSS of a 2x512 LSTM training run
on the bundled corpus under 1 GB.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, report  # noqa: E402


def help_time() -> float:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run(["nextchar", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def python_start() -> float:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def training_peak_rss_mb() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nextchar",
                "train",
                "--out",
                f"{tmp}/run",
                "--steps",
                "30",
                "--hidden",
                "512",
                "--layers",
                "2",
                "--batch-size",
                "64",
                "--seq-len",
                "128",
                "--eval-every",
                "15",
                "--quiet",
            ],
            check=True,
        )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def auto_cost() -> tuple[float, float]:
    """Seconds of every `auto` decision of a default 3-minute run and of sampling its model,
    with an empty cache, then again with the cache it filled."""
    import torch

    from nextchar import budget, devices
    from nextchar.config import ModelConfig
    from nextchar.model import CharRNN
    from nextchar.sample import sample_precision

    cpu = torch.device("cpu")
    model = ModelConfig(
        vocab_size=65,
        **{
            k: v
            for k, v in budget.RUN_DEFAULTS.items()
            if k in ("cell", "layers", "embed", "hidden")
        },
    )

    def decide_all() -> float:
        started = time.perf_counter()
        plan = budget.plan({"time": 180.0}, model, 32, 64, 1_003_854, cpu, "auto")
        chosen = dataclasses.replace(model, hidden=plan.options.get("hidden", model.hidden))
        devices.eval_precision("auto", chosen, cpu)
        net = CharRNN(chosen)
        for streams in (1, 64):
            sample_precision("auto", net, streams)
        return time.perf_counter() - started

    # The first optimizer built in a process imports torch._dynamo (1.7 s here); every training
    # run pays that when it builds its own, measured or not, so it is not the cost of measuring.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NEXTCHAR_CACHE_DIR"] = tmp
        first = decide_all()
        cached = min(decide_all() for _ in range(3))
    return first, cached


def main() -> None:
    print(f"machine: {machine()}")
    report(
        "nextchar --help",
        help_time(),
        "s",
        reference=python_start(),
        ref_name="bare python start",
        floor=0.5,
        floor_is_max=True,
    )
    first, cached = auto_cost()
    report(
        "auto: every decision of a default 3m run and its sampling, first use",
        first,
        "s",
        floor=2.0,
        floor_is_max=True,
    )
    report("auto: the same decisions once cached", cached * 1000, "ms", floor=50, floor_is_max=True)
    report(
        "peak RSS, 2x512 training on tinyshakespeare",
        training_peak_rss_mb(),
        "MB",
        floor=1024,
        floor_is_max=True,
    )
    finish()


if __name__ == "__main__":
    main()
