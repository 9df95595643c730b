"""Shared fixtures. Tiny models on one thread: fast, and no oversubscription of a 2-core machine."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also reaches the CLI subprocesses
# The checkout under test, not whichever nextchar is installed (an editable install of another
# worktree, say): in this process and in the CLI subprocesses the tests start.
SRC = str(Path(__file__).resolve().parent.parent / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny import TINY  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_text() -> str:
    """About 6 KB of English-like text with a few non-ASCII characters."""
    line = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
    return "".join(f"{i}: {line}" for i in range(90))


@pytest.fixture
def tiny_file(tmp_path, tiny_text):
    path = tmp_path / "tiny.txt"
    path.write_text(tiny_text, encoding="utf-8")
    return path


@pytest.fixture
def tiny_options():
    return dict(TINY)


@pytest.fixture(autouse=True, scope="session")
def _autotune_cache(tmp_path_factory):
    """One `auto` timing cache for the whole session (CLI subprocesses inherit it), never the
    user's own."""
    os.environ["NEXTCHAR_CACHE_DIR"] = str(tmp_path_factory.mktemp("autotune-cache"))
    yield


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty `auto` timing cache for one test."""
    monkeypatch.setenv("NEXTCHAR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
