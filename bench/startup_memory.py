"""Start-up time of `nextchar --help` and peak memory of a 2x512 training run.

    python bench/startup_memory.py

Floors: --help under 0.5 s (median of 7); peak RSS of a 2x512 LSTM training run on the bundled
corpus under 1 GB.
"""

from __future__ import annotations

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
        subprocess.run([sys.executable, "-m", "nextchar", "train", "--out", f"{tmp}/run", "--steps", "30",
                        "--hidden", "512", "--layers", "2", "--batch-size", "64", "--seq-len", "128",
                        "--eval-every", "15", "--quiet"], check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    print(f"machine: {machine()}")
    report("nextchar --help", help_time(), "s", reference=python_start(), ref_name="bare python start",
           floor=0.5, floor_is_max=True)
    report("peak RSS, 2x512 training on tinyshakespeare", training_peak_rss_mb(), "MB",
           floor=1024, floor_is_max=True)
    finish()


if __name__ == "__main__":
    main()
