"""`nextchar report` on a 2x512 LSTM run folder (the one bench/sampling.py builds, random weights,
vocab 65): wall clock of the whole command, Python and torch start-up included, and the part the
command itself reports for writing the page, against a bare `python -c "import torch"` started
the same way. The passage is the first characters of the bundled tinyshakespeare.

    python bench/report_timing.py                 # floor: the command within 10 s
    python bench/report_timing.py --chars 2000 --rounds 3

One line per figure (median of the rounds); exit status 1 when the floor is missed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, report  # noqa: E402
from sampling import make_run  # noqa: E402

CORPUS = (
    Path(__file__).resolve().parent.parent / "src" / "nextchar" / "corpora" / "tinyshakespeare.txt"
)


def timed(args: list[str]) -> tuple[float, str]:
    """(wall seconds, stderr) of a subprocess."""
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return wall, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chars", type=int, default=2000, help="passage length (default 2000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        run, text = Path(tmp) / "run", Path(tmp) / "passage.txt"
        make_run(run)
        text.write_text(CORPUS.read_text(encoding="utf-8")[: args.chars * 2], encoding="utf-8")
        walls, writes, starts = [], [], []
        for _ in range(args.rounds):
            starts.append(timed([sys.executable, "-c", "import torch"])[0])
            wall, err = timed(
                [
                    sys.executable,
                    "-m",
                    "nextchar",
                    "report",
                    str(run),
                    "--text",
                    str(text),
                    "--chars",
                    str(args.chars),
                ]
            )
            walls.append(wall)
            writes.append(float(re.search(r" in ([0-9.]+)s", err).group(1)))
    report("python -c 'import torch'", statistics.median(starts), "s")
    report(
        f"nextchar report --chars {args.chars}, whole command",
        statistics.median(walls),
        "s",
        reference=statistics.median(starts),
        ref_name="bare torch start",
        floor=10,
        floor_is_max=True,
    )
    report(
        "of which writing the report (as the command says, 0.1 s resolution)",
        statistics.median(writes),
        "s",
    )
    finish()


if __name__ == "__main__":
    main()
