"""Shared pieces of the benchmarks: timing, running the CLI, reporting figures against floors.

Each benchmark prints one line per figure: the figure, its reference from the same run, the
ratio and the floor, then exits non-zero if any floor was missed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MISSED: list[str] = []


def report(
    name: str,
    value: float,
    unit: str,
    *,
    reference: float | None = None,
    ref_name: str = "",
    floor: float | None = None,
    floor_is_max: bool = False,
    ratio_floor: float | None = None,
) -> None:
    parts = [f"{name}: {value:,.3f} {unit}" if value < 100 else f"{name}: {value:,.0f} {unit}"]
    ok = True
    if reference is not None:
        ratio = value / reference if reference else float("nan")
        parts.append(f"reference {ref_name} {reference:,.1f} -> ratio {ratio:.3f}")
        if ratio_floor is not None:
            parts.append(f"floor ratio {'<=' if floor_is_max else '>='} {ratio_floor}")
            ok = ratio <= ratio_floor if floor_is_max else ratio >= ratio_floor
    if floor is not None:
        parts.append(f"floor {'<=' if floor_is_max else '>='} {floor:g}")
        ok = ok and (value <= floor if floor_is_max else value >= floor)
    if reference is not None or floor is not None:
        parts.append("PASS" if ok else "MISS")
    if not ok:
        MISSED.append(name)
    print(" | ".join(parts), flush=True)


def finish() -> None:
    if MISSED:
        print(f"missed floors: {', '.join(MISSED)}", flush=True)
        sys.exit(1)


def median_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def nextchar(*args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"nextchar {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc


def metrics(run: Path) -> list:
    """The run's metrics.jsonl as typed records (runfolder.py: TrainRecord, EvalRecord, ...)."""
    from nextchar.runfolder import RunFolder

    return RunFolder(run).read_records()


def machine() -> str:
    import platform

    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu or platform.processor()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
