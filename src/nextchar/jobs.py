"""What the batch thread of `nextchar serve` works on (batching.py): each request as a Job, its
rows' text growing as it is drawn, and the running Batch: its jobs in row order, their logits,
StepState and noise (NoiseTable), laid out once per change of membership."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import SampleConfig
from .sample import Stream
from .stepping import StepState


class Job:
    """One request: `config.num_samples` rows drawn together, their text read as it grows.

    The batch thread appends characters and calls `wake` when a reader should look: when the
    first characters land and when the job ends (a wake-up crosses threads and costs both of
    them; in between, a streaming reader reads at its own pace). A reader calls `read()` for
    what is new; `ended` says why it stopped once it has."""

    def __init__(
        self, config: SampleConfig, deadline: float, wake: Callable[[], None] = lambda: None
    ):
        self.config = config
        self.rows = config.num_samples
        self.deadline = deadline  # time.monotonic() past which the job is ended as "timeout"
        self.wake = wake
        self.seed: int | None = None  # set by Batcher.start (the one drawn when none was given)
        self.prime = ""  # the prime as the model read it, shown before every row's text
        self.streams: list[Stream] = []  # each row's random draws
        self.texts: list[list[str]] = [[] for _ in range(self.rows)]  # per row: the characters
        self.leading = 0  # drawn before the first step: 1 when each row drew its first character
        self.produced = 0  # characters generated per row (`length` of them in the end)
        self.read_upto = 0  # entries of each row's texts already returned by read()
        self.ended: str | None = None  # "done", "cancelled", "timeout" or "failed"
        self.cancelled = False
        self.prime_ids: list[int] | None = None  # what every row reads first, or None: each its own

    def cancel(self) -> None:
        """Leave the batch at the next step (a reader that went away)."""
        self.cancelled = True

    def read(self) -> list[str]:
        """Per row, the text generated since the last read (a drawn first character included)."""
        upto = self.leading + self.produced
        new = ["".join(row[self.read_upto : upto]) for row in self.texts]
        self.read_upto = upto
        return new

    def text(self, row: int) -> str:
        """Row `row`'s whole text: the prime, then what was drawn."""
        return self.prime + "".join(self.texts[row])

    def end(self, reason: str) -> None:
        """Over, for `reason`: its noise is freed and its reader woken (by the Batcher)."""
        self.ended = reason
        self.streams = []  # free the noise now
        self.wake()


@dataclass
class Arrival:
    """Jobs primed together: their rows' logits (B, V) and StepState, in job order."""

    jobs: list[Job]
    logits: torch.Tensor
    state: StepState


class NoiseTable:
    """The Gumbel noise of every row of the batch for the next few steps in one (N, V) table,
    read a step at a time by one index_select: row b of step t sits at cursor[b] + t. Copying
    WINDOW steps of each stream's block in once costs less than slicing 64 streams' blocks every
    step (2.6 us a slice on the 2-core machine, against 8 us for the one gather). Built again
    when jobs join or a row has read its window; rows that leave only leave the cursor. Holding
    a window rather than the whole rest of every block keeps a join cheap: a burst of 64
    requests joining one by one would otherwise copy every stream's block again at each join.
    Row 0 is zeros, read by greedy rows."""

    WINDOW = 64  # steps of noise per row copied in at a time

    def __init__(
        self, table: torch.Tensor, cursor: torch.Tensor, stride: torch.Tensor, steps_left: float
    ):
        self.table, self.cursor, self.stride = table, cursor, stride  # (N, V), (B,), (B,)
        self.steps_left = steps_left  # steps until some row has read all of its window
        self.steps = 0  # read since built

    @classmethod
    def build(cls, batch: Batch, joining: list[Job], logits: torch.Tensor) -> NoiseTable:
        """A table for the batch's jobs (their streams told what was read) and the joining ones;
        `logits` (B, V) only tells the vocabulary size and the device."""
        for job in batch.jobs:
            if not job.config.greedy:
                for stream in job.streams:
                    stream.skip(batch.noise.steps)
        V, device = logits.size(-1), logits.device
        parts, cursor, stride, base, steps_left = [torch.zeros(1, V)], [], [], 1, float("inf")
        for job in batch.jobs + joining:
            if job.config.greedy:
                cursor += [0] * job.rows
                stride += [0] * job.rows
                continue
            for stream in job.streams:
                rest = stream.rest()[: cls.WINDOW]  # (m, V)
                parts.append(rest)
                cursor.append(base)
                stride.append(1)
                base += len(rest)
                steps_left = min(steps_left, len(rest))
        return cls(
            torch.cat(parts).to(device),
            torch.tensor(cursor, device=device),
            torch.tensor(stride, device=device),
            steps_left,
        )

    def read(self) -> torch.Tensor:
        """This step's noise, (B, V)."""
        noise = self.table.index_select(0, self.cursor)
        self.cursor += self.stride
        self.steps += 1
        self.steps_left -= 1
        return noise

    def keep(self, rows: torch.Tensor) -> NoiseTable:
        """The same table, read for `rows` of the batch only."""
        self.cursor, self.stride = self.cursor[rows], self.stride[rows]
        return self


class Batch:
    """The running jobs, in row order, with their logits (B, V), StepState and noise, and what the
    loop needs of their layout, worked out once per change of membership rather than once per
    step: each job's first row, the groups of rows drawn together, and when a job may next leave."""

    def __init__(
        self,
        jobs: list[Job],
        logits: torch.Tensor | None,
        state: StepState | None,
        noise: NoiseTable | None = None,
    ):
        self.jobs, self.logits, self.state, self.noise = jobs, logits, state, noise
        self.first_rows = list(itertools.accumulate([0] + [job.rows for job in jobs[:-1]]))
        groups: dict[tuple, list[int]] = {}
        for job, first in zip(jobs, self.first_rows):
            c = job.config
            groups.setdefault((c.greedy, c.temperature, c.top_k, c.top_p), []).extend(
                range(first, first + job.rows)
            )
        self.groups = [(key, torch.tensor(rows)) for key, rows in groups.items()]
        self.steps_to_end = min((job.config.length - job.produced for job in jobs), default=0)
        self.first_deadline = min((job.deadline for job in jobs), default=float("inf"))
