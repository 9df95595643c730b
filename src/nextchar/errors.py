"""The exceptions the CLI turns into one line and an exit code (see cli.main): UserError (2),
Interrupted (128 + signal), Diverged and PeerFailure (1)."""


class UserError(Exception):
    """A mistake in input or settings. The CLI prints it as one line and exits with code 2."""


class Interrupted(Exception):
    """Training stopped by a signal after saving a resumable checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Diverged(Exception):
    """Training gave up after repeated non-finite steps; the last good checkpoint is kept."""


class PeerFailure(Exception):
    """Another training process (torchrun rank) failed or stopped answering; the last checkpoint
    is kept. The CLI prints it as one line and exits with code 1."""
