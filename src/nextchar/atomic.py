"""Atomic files: the one temporary-name convention, and writes that never leave a mix.

A file is written to `.NAME.tmp-PID` beside its target, fsynced and renamed over the target, so
a reader sees the old file or the new one, never a mix; a crash at any moment leaves at most such
a temporary file, which `remove_temps` clears. The run folder, prepared data and the autotune
cache all name their temporary files through `temp_path` and recognise them with `is_temp`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

from .errors import UserError

_TEMP = re.compile(r"\..+\.tmp-\d+")  # what temp_path makes: .NAME.tmp-PID


class CheckpointWriteError(UserError):
    """Saving failed (disk full, permissions): the previous checkpoint is intact."""


def temp_path(path: str | os.PathLike) -> Path:
    """Where this process stages `path` before it is renamed into place: .NAME.tmp-PID beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp(name: str) -> bool:
    """Whether a file name is one that temp_path makes (by any process)."""
    return _TEMP.fullmatch(name) is not None


def remove_temps(folder: Path) -> list[Path]:
    """Delete the temporary files and folders in `folder` of writes a crash cut short; returns them."""
    stray = sorted(p for p in folder.iterdir() if is_temp(p.name))
    for p in stray:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                pass
    return stray


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Steps of an atomic write, in order, where NEXTCHAR_FAULT can stop the process (see _fault).
FAULT_POINTS = ("partial", "written", "synced", "renamed", "done")
_writes: dict[str, int] = {}  # atomic writes of each file name by this process


def _fault(point: str, path: Path, file=None) -> None:
    """Test hook: NEXTCHAR_FAULT=POINT:NAME:N kills this process (SIGKILL, as a crash) at POINT of
    its N-th atomic write of a file named NAME, so tests can stop a write at each of its steps."""
    spec = os.environ.get("NEXTCHAR_FAULT")
    if spec and spec == f"{point}:{path.name}:{_writes.get(path.name, 0)}":
        if file is not None:
            file.flush()  # what was written so far is in the file, as in a crash
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temp_path(path)
    _writes[path.name] = _writes.get(path.name, 0) + 1
    try:
        with open(tmp, "wb") as f:
            view, half = memoryview(payload), len(payload) // 2
            f.write(view[:half])
            _fault("partial", path, f)
            f.write(view[half:])
            f.flush()
            _fault("written", path)
            os.fsync(f.fileno())
        _fault("synced", path)
        os.replace(tmp, path)
    except BaseException as exc:  # disk full, or a second Ctrl-C: leave no partial file behind
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(exc, OSError):
            raise
        raise CheckpointWriteError(
            f"could not write {path}: {exc.strerror or exc}; the previous file is unchanged"
        ) from None
    _fault("renamed", path)
    _fsync_dir(path.parent)
    _fault("done", path)
