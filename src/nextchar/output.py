"""Standard streams for the CLI: what happens when they are closed, cannot encode the text, or
fail, and how samples reach stdout.

Decisions (each tested through the CLI in tests/test_streams.py):
- stdout closed (`>&-`): a command whose product is its stdout (sample, eval, hihello, any --json)
  refuses before any work, exit 2; others run with their stdout discarded.
- stderr closed: messages are discarded; exit codes still tell what happened.
- stdout in an encoding that cannot show every character (PYTHONIOENCODING=ascii, a latin-1
  terminal): such characters are written as \\uXXXX escapes, never dropped, and one line on stderr
  says how many and how to get them as they are.
- a write to stdout that fails (a full disk, `>/dev/full`): one line, exit 1.
- samples: the first stream goes out as it is drawn; the others are spooled (to memory, then to a
  temporary file past 1 MB each) and follow it, so memory does not grow with --length. A Ctrl-C
  writes every sample as far as it got.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
import tempfile
import time
from typing import TextIO

from .errors import UserError

REPLACED = {"count": 0}  # characters stdout's encoding could not show, written as escapes
FLUSH_EVERY_S = 0.05  # the streamed sample goes out in one write per 50 ms (the first at once)
SPOOL_MEMORY_BYTES = 1 << 20  # per spooled sample, before it moves to a temporary file
PIECES_PER_WRITE = 4096  # characters gathered per row before one write to its spool


def _escape_and_count(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    REPLACED["count"] += exc.end - exc.start
    return codecs.backslashreplace_errors(exc)


codecs.register_error("nextchar-escape", _escape_and_count)


def _encodes_everything(stream: TextIO) -> bool:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("_", "-")
    return encoding.startswith(("utf-8", "utf8", "utf-16", "utf-32"))


class StdoutFailed(Exception):
    """A write to stdout failed for a reason other than its reader leaving (a full disk)."""


class _GuardedStdout:
    """stdout, with its write failures raised as StdoutFailed (a broken pipe stays itself)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def _guard(self, method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutFailed(exc.strerror or str(exc)) from None

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def setup_streams(needs_stdout: bool, command: str) -> None:
    """Make the standard streams safe to write to before a command runs (see the module docstring).
    Raises UserError when the command's product would have nowhere to go."""
    REPLACED["count"] = 0
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
    if sys.stdout is None:
        if needs_stdout:
            raise UserError(
                f"standard output is closed: {command}'s output would be lost; "
                "redirect it to a file (> FILE) or a pipe"
            )
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if not _encodes_everything(sys.stdout) and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="nextchar-escape")
    if not isinstance(sys.stdout, _GuardedStdout):
        sys.stdout = _GuardedStdout(sys.stdout)


def replaced_note() -> str | None:
    """The line to say when stdout's encoding could not show some characters, else None."""
    n = REPLACED["count"]
    if not n:
        return None
    encoding = getattr(sys.stdout, "encoding", "?")
    return (
        f"note: standard output's encoding ({encoding}) cannot show {n:,} of the characters; "
        "they were written as \\uXXXX escapes (set PYTHONIOENCODING=utf-8 to get them as they are)"
    )


class SampleWriter:
    """Writes `rows` samples to `out` as on_text(row, text) hands them over (see the module
    docstring). Plain: the samples separated by a blank line. JSON: {"samples": [...]}, with
    "interrupted": true when a Ctrl-C cut them short."""

    def __init__(self, out: TextIO, rows: int, as_json: bool, on_start=None):
        """on_start(): called once, when the first character arrives (to tell a waiting user)."""
        self.out, self.rows, self.as_json = out, rows, as_json
        self.on_start = on_start
        self.live = not as_json  # row 0 streams straight to `out`
        self.pending: list[list[str]] = [[] for _ in range(rows)]
        self.spools = [
            None
            if (row == 0 and self.live)
            else tempfile.SpooledTemporaryFile(
                SPOOL_MEMORY_BYTES, mode="w+", encoding="utf-8", newline=""
            )
            for row in range(rows)
        ]
        self.last_flush = 0.0
        self.started = False  # a character has arrived
        self.stop = False  # Ctrl-C pressed: stop at the next character

    def on_sigint(self, signum, frame) -> None:
        """SIGINT handler while sampling: before the first character (or on a second Ctrl-C) stop
        at once; otherwise at the start of the next add(), so that no write is cut in half and
        nothing is written twice."""
        if not self.started or self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def add(self, row: int, text: str) -> None:
        if self.stop:
            raise KeyboardInterrupt
        if not self.started:
            self.started = True
            if self.on_start is not None:
                self.on_start()
        pieces = self.pending[row]
        pieces.append(text)
        if row == 0 and self.live:
            now = time.perf_counter()
            if now - self.last_flush > FLUSH_EVERY_S:
                self._flush_live()
                self.last_flush = now
        elif len(pieces) >= PIECES_PER_WRITE:
            self._spool(row)

    def _flush_live(self) -> None:
        self.out.write("".join(self.pending[0]))
        self.out.flush()
        self.pending[0].clear()

    def _spool(self, row: int) -> None:
        self.spools[row].write("".join(self.pending[row]))
        self.pending[row].clear()

    def _copy(self, row: int, escape: bool) -> None:
        """Write spooled row `row` to `out`, JSON-escaped when `escape`, 1 MB at a time."""
        self._spool(row)
        spool = self.spools[row]
        spool.seek(0)
        while chunk := spool.read(SPOOL_MEMORY_BYTES):
            # a JSON string's escaping is per character, so escaped chunks concatenate
            self.out.write(json.dumps(chunk, ensure_ascii=False)[1:-1] if escape else chunk)
        spool.close()

    def finish(self, interrupted: bool = False) -> None:
        """Everything drawn so far, in order; called once, also after a Ctrl-C."""
        if self.as_json:
            self.out.write('{"samples": [')
            for row in range(self.rows):
                self.out.write(', "' if row else '"')
                self._copy(row, escape=True)
                self.out.write('"')
            self.out.write("]" + (', "interrupted": true' if interrupted else "") + "}\n")
        else:
            self._flush_live()
            for row in range(1, self.rows):
                self.out.write("\n\n")
                self._copy(row, escape=False)
            self.out.write("\n")
        self.out.flush()
