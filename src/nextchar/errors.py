"""The exceptions the CLI turns into one line and an exit code (see cli.main), and the codes.

UserError -> EXIT_USAGE; Interrupted -> 128 + its signal (EXIT_INTERRUPTED after Ctrl-C);
Diverged and PeerFailure -> EXIT_FAILURE."""

import signal

EXIT_OK = 0
EXIT_FAILURE = 1  # an internal error, a failed write, a run that diverged or lost a peer
EXIT_USAGE = 2  # a usage or input error: one line on stderr says what to change
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: stopped by Ctrl-C (128 + the signal, as shells do)


def exit_code_for_signal(signum: int) -> int:
    """The exit status of a process stopped by `signum` after cleaning up: 130 / 143 for
    SIGINT / SIGTERM."""
    return 128 + signum


class UserError(Exception):
    """A mistake in input or settings. The CLI prints it as one line and exits EXIT_USAGE."""


class Interrupted(Exception):
    """Training stopped by a signal after saving a resumable checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Diverged(Exception):
    """Training gave up after repeated non-finite steps; the last good checkpoint is kept."""


class PeerFailure(Exception):
    """Another training process (torchrun rank) failed or stopped answering; the last checkpoint
    is kept. The CLI prints it as one line and exits EXIT_FAILURE."""
