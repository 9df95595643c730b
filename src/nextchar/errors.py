"""The one exception type that means "the user can fix this"."""


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
