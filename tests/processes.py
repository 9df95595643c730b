"""Helpers for tests that run the CLI: in this process, or as a training subprocess to watch."""

import io
import subprocess
import time
from contextlib import redirect_stderr, redirect_stdout

import pytest

from nextchar.cli import main

# a run that trains in about a second, on text with enough lines for every split
TINY_TRAIN_FLAGS = [
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
    "--steps",
    "3",
    "--sample-chars",
    "0",
]
TINY_TEXT = "".join(f"{i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))


def cli(*args) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, stderr)."""
    code, _, err = cli_output(*args)
    return code, err


def cli_output(*args) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out), pytest.raises(SystemExit) as ended:
        main([str(a) for a in args])
    return ended.value.code, out.getvalue(), err.getvalue()


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll `predicate` until it holds; fail if `proc` ends first or nothing happens in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no progress")
        time.sleep(0.02)
