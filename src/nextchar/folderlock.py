"""One writer per folder: an exclusive OS lock on FOLDER/.nextchar.lock.

A process that trains, resumes or prepares into a folder holds the lock from before it clears or
writes anything there until it is done; the OS drops it when the process ends, however it ends
(SIGKILL included), so a crash never leaves a stale lock. A second writer is refused at once,
told who holds it (read from the lock file). Readers (sample, eval, report, plot) never take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError

LOCK = ".nextchar.lock"


class FolderLock:
    """A held lock; `release` (or the end of the process) lets the next writer in."""

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, {info['purpose']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is just starting"


def acquire(folder: str | os.PathLike, purpose: str) -> FolderLock:
    """Lock `folder` (which must exist) for this process, or raise UserError naming the holder.
    `purpose` says what the holder does ("training", "resuming", "preparing data")."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot create the lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"{folder} is in use by another nextchar process ({_holder(path)}); wait "
            f"for it to end or pick another folder"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise UserError(f"cannot lock {path}: {exc.strerror}") from None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "purpose": purpose,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return FolderLock(fd, path)
