"""guard.py: one path for non-finite steps on every device. Counted on the host and read every
step (the CPU) or counted on the device and read now and then (CUDA, `defer`), the counts tell the
same story; the host skips the optimizer itself only when it knows. (The whole loop both ways,
against each other: test_distributed.py.)"""

import torch

from nextchar.guard import NonFiniteGuard, carry, taken

PATTERN = [True, False, True, False, False, False, True, False]  # finite, step by step


class Recorder:
    """Stands in for an optimizer: counts its steps and keeps the found_inf each one was given."""

    def __init__(self):
        self.steps, self.given, self.found_inf = 0, [], None

    def step(self):
        self.steps += 1
        self.given.append(None if self.found_inf is None else float(self.found_inf))


def test_read_every_step_the_host_skips_and_counts_each_one():
    guard, optimizer = NonFiniteGuard(torch.device("cpu"), defer=False, max_bad_steps=3), Recorder()
    reads = []
    for finite in PATTERN:
        ok = guard.step(optimizer, torch.tensor(finite))
        assert ok is finite and taken(ok) == finite  # the host knows
        reads.append(guard.read())
    assert optimizer.steps == PATTERN.count(True)  # never called for a non-finite step
    assert reads == [(0, 0), (1, 1), (0, 1), (1, 1), (1, 2), (1, 3), (0, 3), (1, 1)]
    assert [guard.diverged(longest) for _, longest in reads].index(True) == 5  # the third in a row
    assert optimizer.given == [None] * optimizer.steps  # found_inf is for the fused optimizer only


def test_deferred_the_optimizer_skips_and_the_counts_add_up_between_reads():
    guard, optimizer = NonFiniteGuard(torch.device("cpu"), defer=True, max_bad_steps=3), Recorder()
    oks = [guard.step(optimizer, torch.tensor(f)) for f in PATTERN[:5]]
    assert all(torch.is_tensor(ok) and taken(ok) for ok in oks)  # the host never knows
    assert optimizer.given == [0.0, 1.0, 0.0, 1.0, 1.0]  # the fused optimizer skips the 1.0 ones
    assert guard.read() == (3, 2)  # 3 skipped, 2 in a row at most, still going on
    for finite in PATTERN[5:]:
        guard.step(optimizer, torch.tensor(finite))
    skipped, longest = guard.read()
    assert (skipped, longest) == (2, 3) and guard.diverged(
        longest
    )  # the run went on across the read
    assert guard.due(10, log_every=5) and not guard.due(11, log_every=5)
    assert NonFiniteGuard(torch.device("cpu"), defer=False, max_bad_steps=3).due(11, log_every=5)


def test_the_carried_state_after_a_step():
    h, c = torch.ones(1, 2, 3, requires_grad=True) * 2, torch.full((1, 2, 3), 5.0)
    for ok in (True, torch.tensor(True)):
        kept = carry((h, c), ok)
        assert torch.equal(kept[0], h) and torch.equal(kept[1], c) and not kept[0].requires_grad
    zeroed = carry((h, c), torch.tensor(False))  # skipped on the device
    assert all(torch.equal(t, torch.zeros(1, 2, 3)) for t in zeroed)
    assert torch.equal(carry(h, torch.tensor(False)), torch.zeros(1, 2, 3))
    assert carry(h, False) is None  # skipped, and the host knows it
