"""Preparing a corpus larger than memory, and starting to train on it: speed and memory floors.

Generates mixed UTF-8 corpora in a scratch folder (never committed): tinyshakespeare repeated,
with lines of accented Latin, Greek, Cyrillic, CJK (a few thousand distinct ideographs, so ids
need uint16) and emoji mixed in. Then, each in a fresh `nextchar` subprocess:

    prepare 1 GB          MB/s of UTF-8 input and peak RSS       floors: >= 50 MB/s, < 1 GiB
    train on 1 GB         seconds from launch to the first step  floor:  < 10 s
    train on 100 MB / 1 GB peak RSS of each, and their ratio       floor:  1 GB run < 1.2 x 100 MB run

Training runs 20 steps of the default model from the prepared folder, logging every step; the
time to the first step is when metrics.jsonl first holds a train line. One line per figure; exit
status 1 when a floor is missed. Each half takes well under a minute:

    python bench/prepare_bench.py --only prepare  # 1 GB and 100 MB corpora in /tmp/nextchar-bench
    python bench/prepare_bench.py --only train
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "src" / "nextchar" / "corpora" / "tinyshakespeare.txt"
MB = 1_000_000


def _foreign_lines(rng: np.random.Generator, count: int) -> list[str]:
    """Lines of non-ASCII text: accents, Greek, Cyrillic, CJK ideographs, emoji."""
    latin = "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿœšžßÀÉÎÕÜ"
    greek = "αβγδεζηθικλμνξοπρστυφχψω"
    cyrillic = "абвгдежзийклмнопрстуфхцчшщъыьэюя"
    lines = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            words = [
                "".join(rng.choice(list(latin + "aeiou"), size=rng.integers(3, 9)))
                for _ in range(8)
            ]
        elif kind == 1:
            words = [
                "".join(rng.choice(list(greek + cyrillic), size=rng.integers(3, 9)))
                for _ in range(8)
            ]
        elif kind == 2:  # CJK: 4000 distinct ideographs over the whole corpus
            points = rng.integers(0x4E00, 0x4E00 + 4000, size=40)
            words = ["".join(map(chr, points[j : j + 10])) for j in range(0, 40, 10)]
        else:
            points = rng.integers(0x1F600, 0x1F650, size=6)  # emoji: astral code points
            words = ["".join(map(chr, points)), "smile", "日本語のテキスト"]
        lines.append(" ".join(words) + "\n")
    return lines


def make_corpus(path: Path, size_bytes: int, seed: int = 0) -> Path:
    """A mixed UTF-8 file of about `size_bytes` (kept when it exists with that size)."""
    if path.exists() and abs(path.stat().st_size - size_bytes) < 4 * MB:
        return path
    rng = np.random.default_rng(seed)
    base = SHAKESPEARE.read_text(encoding="utf-8").splitlines(keepends=True)
    blocks = []
    for _ in range(4):  # the play with a foreign line after every 40th line (about 2% of lines)
        foreign = iter(_foreign_lines(rng, len(base) // 40 + 1))
        parts = []
        for i, line in enumerate(base):
            parts.append(line)
            if i % 40 == 39:
                parts.append(next(foreign))
        blocks.append("".join(parts).encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "wb") as f:
        while written < size_bytes:
            block = blocks[(written // len(blocks[0])) % len(blocks)]
            if written + len(block) > size_bytes:  # the last piece: cut, but never mid-character
                block = block[: size_bytes - written].decode("utf-8", "ignore").encode("utf-8")
                if not block:
                    break
            f.write(block)
            written += len(block)
    os.replace(tmp, path)
    return path


def _nextchar(*args: str) -> list[str]:
    return [sys.executable, "-m", "nextchar", *args]


def measure(cmd: list[str], watch: Path | None = None, marker: str = "") -> dict:
    """Run `cmd` as a child process: its wall time, its own peak RSS (MiB, from wait4), and the
    seconds until the file `watch` first holds `marker` (None when never seen)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    errors = tempfile.TemporaryFile()  # not a pipe: a chatty child must never block on it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    first = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if (
            watch is not None
            and first is None
            and watch.exists()
            and marker in watch.read_text(errors="replace")
        ):
            first = time.perf_counter() - started
        time.sleep(0.01)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here, by wait4
    if code != 0:
        errors.seek(0)
        raise SystemExit(
            f"failed ({code}): {' '.join(cmd)}\n{errors.read().decode(errors='replace')}"
        )
    return {"wall": wall, "rss": usage.ru_maxrss / 1024, "first": first}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", default="/tmp/nextchar-bench", help="scratch folder for corpora and runs"
    )
    parser.add_argument("--size-mb", type=int, default=1000, help="the large corpus, in MB")
    parser.add_argument("--small-mb", type=int, default=100, help="the corpus it is compared with")
    parser.add_argument("--only", choices=["prepare", "train"], help="one half of the benchmark")
    args = parser.parse_args()
    scratch = Path(args.dir)
    missed = []

    def report(name: str, value: float, unit: str, floor: str, ok: bool | None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"{name:<40} {value:>9.2f} {unit:<5} floor {floor:<8} {verdict}", flush=True)
        if ok is False:
            missed.append(name)

    big = make_corpus(scratch / f"mixed-{args.size_mb}mb.txt", args.size_mb * MB)
    small = make_corpus(scratch / f"mixed-{args.small_mb}mb.txt", args.small_mb * MB)
    data = {corpus: scratch / (corpus.stem + "-data") for corpus in (big, small)}
    if args.only != "train":
        for corpus in (big, small):
            shutil.rmtree(data[corpus], ignore_errors=True)  # removing 2 GB is not preparing
            size = corpus.stat().st_size / MB
            got = measure(_nextchar("prepare", str(corpus), "--out", str(data[corpus])))
            meta = json.loads((data[corpus] / "data.json").read_text())
            vocab = len(json.loads((data[corpus] / "vocab.json").read_text())["symbols"])
            print(
                f"# {corpus.name}: {size:.0f} MB of UTF-8, {meta['length']:,} chars, vocab {vocab}, "
                f"ids {meta['dtype']}",
                flush=True,
            )
            big_one = corpus is big
            report(
                f"prepare {size:.0f} MB: speed",
                size / got["wall"],
                "MB/s",
                ">= 50" if big_one else "-",
                size / got["wall"] >= 50 if big_one else None,
            )
            report(
                f"prepare {size:.0f} MB: peak RSS",
                got["rss"],
                "MiB",
                "< 1024" if big_one else "-",
                got["rss"] < 1024 if big_one else None,
            )
    if args.only != "prepare":
        rss = {}
        for corpus in (big, small):
            if not (data[corpus] / "data.json").exists():
                raise SystemExit(f"{data[corpus]} is not prepared: run without --only train first")
            size = corpus.stat().st_size / MB
            run = scratch / (corpus.stem + "-run")
            shutil.rmtree(run, ignore_errors=True)
            # the default model; no evaluation before the end (--eval-every past the last step)
            got = measure(
                _nextchar(
                    "train",
                    str(data[corpus]),
                    "--out",
                    str(run),
                    "--steps",
                    "20",
                    "--log-every",
                    "1",
                    "--eval-chars",
                    "20000",
                    "--eval-every",
                    "1000",
                    "--quiet",
                    "--device",
                    "cpu",
                    "--threads",
                    "1",
                ),
                run / "metrics.jsonl",
                '"kind": "train"',
            )
            first = got["first"] if got["first"] is not None else float("inf")
            report(f"train {size:.0f} MB: launch to first step", first, "s", "< 10", first < 10)
            report(f"train {size:.0f} MB: peak RSS", got["rss"], "MiB", "-", None)
            rss[corpus] = got["rss"]
        ratio = rss[big] / rss[small]
        report(
            f"train peak RSS, {big.stat().st_size / MB:.0f} MB / {small.stat().st_size / MB:.0f} MB",
            ratio,
            "x",
            "< 1.2",
            ratio < 1.2,
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
