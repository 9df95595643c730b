"""`nextchar` command line: parse flags, build configs, call the library. Nothing imports this.

    parser.py    the flags of every command
    commands.py  what each command does with them

Data (samples, --json results) goes to stdout; progress and messages to stderr. Exit codes are
errors.EXIT_*: 0 success, 2 usage or input error, 1 internal failure (130/143 after
SIGINT/SIGTERM, with a resumable checkpoint saved).
"""

from __future__ import annotations

import os
import sys

from ..errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Diverged,
    Interrupted,
    PeerFailure,
    UserError,
    exit_code_for_signal,
)
from .commands import COMMANDS, say_line
from .parser import PROG, build_parser


def leave(code: int) -> None:
    """Exit with `code`. A torchrun worker skips interpreter teardown once its output is flushed:
    the process group is already destroyed, yet gloo's threads could still abort the exit
    ("terminate called without an active exception", exit -6): 3 of 12 torchrun tests here."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)


STDOUT_COMMANDS = ("hihello", "eval", "sample")  # their product is what they print


def main(argv: list[str] | None = None) -> None:
    from ..allocator import keep_freed_memory
    from ..output import StdoutFailed, replaced_note, setup_streams

    keep_freed_memory()  # before any tensor: each training step reuses the memory the last freed
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        setup_streams(args.command in STDOUT_COMMANDS or getattr(args, "json", False), args.command)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a failing write shows here, not in the interpreter's teardown
    except UserError as exc:
        say_line(f"{PROG} {args.command}: error: {exc}")
        leave(EXIT_USAGE)
    except Interrupted as exc:
        say_line(f"{PROG} {args.command}: {exc}")
        leave(exit_code_for_signal(exc.signum))
    except (Diverged, PeerFailure) as exc:
        say_line(f"{PROG} {args.command}: error: {exc}")
        leave(EXIT_FAILURE)
    except KeyboardInterrupt:
        say_line(f"{PROG} {args.command}: interrupted")
        leave(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _discard_stdout()
        sys.stderr.close()  # the reader went away (e.g. `| head`): not an error
        leave(EXIT_OK)
    except StdoutFailed as exc:
        _discard_stdout()
        say_line(f"{PROG} {args.command}: error: cannot write to standard output: {exc}")
        leave(EXIT_FAILURE)
    note = replaced_note()
    if note:
        say_line(note)
    leave(code)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the text it could not take is not retried at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
