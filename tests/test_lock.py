"""One process per run folder: train, resume and prepare hold an OS lock on the folder; a second
writer is refused at once (exit 2, naming the holder), readers never wait, and the lock dies with
its process (SIGKILL included)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nextchar.folderlock import LOCK, acquire
from processes import wait_until

TRAIN = [
    "--hidden",
    "16",
    "--layers",
    "1",
    "--embed",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--sample-chars",
    "0",
    "--quiet",
]
TEXT = "".join(f"{i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))


def nextchar(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def held_by(folder: Path, pid: int) -> bool:
    try:
        return json.loads((folder / LOCK).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def refused_as_busy(proc: subprocess.CompletedProcess, pid: int) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "in use by another nextchar process" in lines[0], proc.stderr
    assert f"pid {pid} on " in lines[0]
    return lines[0]


@pytest.fixture
def text_file(tmp_path) -> Path:
    (tmp_path / "t.txt").write_text(TEXT)
    return tmp_path / "t.txt"


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_trains(tmp_path, text_file):
    run = tmp_path / "run"
    first = start(
        "train", text_file, "--out", run, "--time", "120", "--eval-every", "5", *TRAIN, cwd=tmp_path
    )
    try:
        wait_until(lambda: held_by(run, first.pid) and (run / "best.safetensors").exists(), first)
        line = refused_as_busy(
            nextchar(
                "train", text_file, "--out", run, "--force", *TRAIN, "--steps", "3", cwd=tmp_path
            ),
            first.pid,
        )
        assert "training since" in line
        refused_as_busy(nextchar("train", "--resume", run, cwd=tmp_path), first.pid)
        sample = nextchar("sample", run, "--length", "5", "--seed", "1", cwd=tmp_path)  # a reader
        assert sample.returncode == 0 and sample.stdout.strip(), sample.stderr
        assert first.poll() is None  # nothing of the above stopped or disturbed the first
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the OS dropped the lock with the killed process: the run resumes
    resumed = nextchar("train", "--resume", run, "--steps", "3", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_two_resumes_at_once_one_is_refused(tmp_path, text_file):
    run = tmp_path / "run"
    assert (
        nextchar("train", text_file, "--out", run, "--steps", "5", *TRAIN, cwd=tmp_path).returncode
        == 0
    )
    first = start("train", "--resume", run, "--steps", "100000", "--quiet", cwd=tmp_path)
    try:
        wait_until(lambda: held_by(run, first.pid), first)
        line = refused_as_busy(
            nextchar("train", "--resume", run, "--steps", "8", cwd=tmp_path), first.pid
        )
        assert "resuming since" in line
    finally:
        first.send_signal(signal.SIGINT)  # saves, then exits 130
        first.communicate(timeout=120)
    steps = [
        r["step"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r.get("kind") == "train"
    ]
    assert steps == sorted(steps)  # one history, not two interleaved ones


def test_a_folder_being_prepared_is_not_written_by_another(tmp_path, text_file):
    """The reported race: a second `train --out R` started while the first was still preparing
    data. Here this process holds R's lock (as the first does from before it prepares)."""
    run = tmp_path / "run"
    run.mkdir()
    with acquire(run, "training"):
        busy = nextchar("train", text_file, "--out", run, "--steps", "3", *TRAIN, cwd=tmp_path)
        refused_as_busy(busy, os.getpid())
        data = tmp_path / "data"
        data.mkdir()
        with acquire(data, "preparing data"):
            refused_as_busy(
                nextchar("prepare", text_file, "--out", data, cwd=tmp_path), os.getpid()
            )
        assert sorted(p.name for p in run.iterdir()) == [LOCK]
        assert sorted(p.name for p in data.iterdir()) == [LOCK]
