"""Helpers for tests that watch a training subprocess."""

import subprocess
import time


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
