"""allocator.py: with freed memory kept, a step's large buffers stop faulting pages back in.

Each check runs in a child process: mallopt changes the whole process it runs in."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A training step of one LSTM layer, 256 wide, at batch 64 x 64: its gate activations (16.8 MB)
# and oneDNN's workspace go back to the kernel with glibc's defaults, and stay under the 128 MiB
# that allocator.py keeps. Eight steps; the page faults of the last five.
CHILD = """
import json, resource, sys
import torch
from nextchar import allocator
state = allocator.keep_freed_memory() if sys.argv[1] == "keep" else allocator.state()
torch.manual_seed(0)
lstm, x = torch.nn.LSTM(32, 256, batch_first=True), torch.randn(64, 64, 32)
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    lstm(x)[0].sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": state, "faults": sum(faults[3:])}))
"""
STEP_PAGES = 5 * (64 * 64 * 4 * 256 * 4) // 4096  # the gates' pages, five steps


def child(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=environ, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's")
def test_kept_memory_is_reused_without_page_faults():
    plain = child("plain")
    assert plain["state"] == "default" and plain["faults"] > STEP_PAGES  # what it fixes
    kept = child("keep")
    assert kept["state"] == "kept (glibc)" and kept["faults"] < STEP_PAGES // 50


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's")
def test_a_malloc_setting_in_the_environment_is_left_alone():
    mine = child("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert mine["state"] == "default (set in the environment)"
    assert mine["faults"] > STEP_PAGES  # glibc's dynamic threshold, not ours: still faulting


def test_the_state_is_settled_once(monkeypatch):
    from nextchar import allocator

    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() == "default (not glibc)"
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    assert allocator.keep_freed_memory() == "default (not glibc)"  # the first answer stands
    assert allocator.state() == "default (not glibc)"
