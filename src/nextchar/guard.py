"""The non-finite guard: a training step whose loss or gradient is not finite is skipped, and
`max_bad_steps` of them in a row end the run.

One path on every device: each step is counted (steps skipped, and the run of them in a row) and
the loop reads the counts back, logs the skips and stops on a run too long. What differs is who
knows first. On the CPU the host reads "finite?" at once (it costs nothing there), skips the
optimizer itself and counts on the host. On CUDA (`defer`) reading it would make the host wait
for the GPU every step: the fused optimizer skips a non-finite step by itself (`found_inf`), the
counts stay on the device, and they are read at log steps only.

What a step returns, `ok`, carries that difference to the loop's other concerns: True or False
when the host knows whether the step was taken, the 0-dim bool tensor when only the device does.
"""

from __future__ import annotations

import torch

from .model import Hidden, detach_hidden

Ok = bool | torch.Tensor


class NonFiniteGuard:
    """Skips non-finite steps and counts them; with `defer`, on the device (see the module doc)."""

    def __init__(self, device: torch.device, defer: bool, max_bad_steps: int):
        self.defer = defer
        self.max_bad_steps = max_bad_steps
        # (non-finite steps in a row now, the longest such run, steps skipped) since the last read
        self.counts = torch.zeros(3, dtype=torch.int64, device=device) if defer else [0, 0, 0]

    def step(self, optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> Ok:
        """Count this step and take the optimizer step unless `finite` (a 0-dim bool tensor) is
        False -> ok: whether it was taken, as the host knows it (see the module doc)."""
        if self.defer:
            skipped = ~finite
            self._count(skipped.long(), torch.maximum)
            optimizer.found_inf = (
                skipped.float()
            )  # the fused optimizer skips the step on the device
            optimizer.step()
            return finite
        ok = bool(finite)
        self._count(int(not ok), max)
        if ok:
            optimizer.step()
        return ok

    def _count(self, bad, maximum) -> None:
        counts = self.counts  # the same arithmetic on the device's tensor and the host's list
        counts[0] = (counts[0] + 1) * bad
        counts[1] = maximum(counts[1], counts[0])
        counts[2] += bad

    def due(self, step: int, log_every: int) -> bool:
        """Whether to read the counts after `step`."""
        return not self.defer or step % log_every == 0

    def read(self) -> tuple[int, int]:
        """(steps skipped, the longest run of them in a row) since the last read (with `defer`,
        a host sync); a run still going on counts on into the next read."""
        run, longest, skipped = self.counts.tolist() if self.defer else self.counts
        self.counts[1], self.counts[2] = run, 0
        return skipped, longest

    def diverged(self, longest: int) -> bool:
        return longest >= self.max_bad_steps


def taken(ok: Ok) -> bool:
    """Whether the loop treats the step as taken: yes unless the host knows it was skipped (with a
    deferred check, a step skipped on the device is averaged again, unchanged)."""
    return ok is not False


def carry(hidden: Hidden, ok: Ok) -> Hidden | None:
    """The hidden state the next window starts from: this one, detached; after a skipped step,
    none (None), or zeros chosen on the device (the same to nn.RNN) when only it knows."""
    if ok is False:
        return None
    hidden = detach_hidden(hidden)
    if ok is True:
        return hidden
    if isinstance(hidden, tuple):
        return tuple(torch.where(ok, h, 0.0) for h in hidden)
    return torch.where(ok, hidden, 0.0)
