"""Many sampling requests, one batched step: `nextchar serve`'s engine, without the HTTP.

    request -> Job -> Batcher.start(job)   Sampler.begin: seed, prime ids, first noise block
                         |                 (in the caller's thread)
                         v
    primer thread        jobs waiting to join, primes of one length in one forward call
                         (Sampler.prime), so a burst of 64 requests costs a few calls, not 64
                         |
                         v
    batch thread, one loop per step:
        admit    primed jobs join the batch: their rows are appended (StepModel.join)
        draw     each job's next characters from the shared logits, with its own noise and
                 settings (jobs with the same settings drawn in one call)
        deliver  the characters to each job; wake its reader
        leave    finished, cancelled and late jobs drop out (StepModel.select)
        step     one StepModel.step for every row left

A job alone runs the very operations of `Sampler.generate` (B = its samples), so it gives the
text of `nextchar sample` with the same seed and precision. Beside other jobs, its rows are drawn
from its own noise with its own settings, but its prime and steps run in products over more
rows, which round differently in the last bit than a lone one (about 1e-7 in fp32): the text is
drawn from the same distribution and is almost always the same, but a near tie between two
characters can go the other way, and the texts part from there on.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .config import SampleConfig
from .sample import Sampler, draw
from .stepping import StepState

log = logging.getLogger("nextchar.serve")


class Busy(Exception):
    """The batch has no room for a job's rows (the --max-streams limit)."""


class Job:
    """One request: `config.num_samples` rows drawn together, their text read as it grows.

    The batch thread appends characters and calls `wake` when a reader should look (at most once
    between two reads, so a fast stream costs one wake-up per read, not one per character). A
    reader calls `read()` for what is new; `ended` says why it stopped once it has."""

    def __init__(self, config: SampleConfig, deadline: float, wake: Callable[[], None] = lambda: None):
        self.config = config
        self.rows = config.num_samples
        self.deadline = deadline  # time.monotonic() past which the job is ended as "timeout"
        self.wake = wake
        self.seed: int | None = None  # set by Batcher.start (the one drawn when none was given)
        self.shown = ""  # the prefix shown before the generated text: the prime, or a drawn first character
        self._blocks: Iterator[torch.Tensor] | None = None  # Gumbel noise blocks (n, rows, V)
        self._block: torch.Tensor | None = None  # the block being read; None for greedy jobs
        self._at = 0  # steps of it read when the batch's noise table was last built
        self._ids: list[int] = []  # what the network reads first (Start.ids)
        self.texts: list[list[str]] = [[] for _ in range(self.rows)]  # generated characters
        self.read_upto = 0  # characters per row already returned by read()
        self.produced = 0  # characters drawn per row
        self.ended: str | None = None  # "done", "cancelled", "timeout" or "failed"
        self.cancelled = False
        self._woken = False

    def cancel(self) -> None:
        """Leave the batch at the next step (a reader that went away)."""
        self.cancelled = True

    def read(self) -> list[str]:
        """Per row, the characters generated since the last read."""
        self._woken = False  # before reading: what lands after this wakes the reader again
        upto = self.produced
        new = ["".join(row[self.read_upto:upto]) for row in self.texts]
        self.read_upto = upto
        return new

    def text(self, row: int) -> str:
        return "".join(self.texts[row])

    def _signal(self) -> None:
        if not self._woken:
            self._woken = True
            self.wake()

    def _end(self, reason: str) -> None:
        self.ended = reason
        self._blocks = self._block = None  # free the noise now
        self._woken = False
        self._signal()


class Batcher:
    """Two threads that step every running job of one model as one batch (see the module doc).

    `sampler` must hold a named weight format (fp32, bf16 or int8, not auto): a batch that
    changes size keeps one format."""

    def __init__(self, sampler: Sampler, max_streams: int, name: str = "model"):
        if sampler.precision == "auto":
            raise ValueError("Batcher needs a named precision; resolve auto first")
        self.sampler = sampler
        self.stepper = sampler.stepper(1)  # one format for every batch size
        self.max_streams = max_streams
        self.symbols = sampler.vocab.symbols
        self._cond = threading.Condition()  # guards everything below
        self._unprimed: list[Job] = []  # started, waiting for the primer
        self._primed: list[Arrival] = []  # primed, waiting to join the batch
        self._reserved = 0  # rows of jobs accepted and not yet ended
        self._closed = False
        self.steps = 0  # batched steps taken
        self.widest = 0  # the most rows stepped together so far
        self._threads = [threading.Thread(target=self._prime_loop, name=f"nextchar-prime-{name}", daemon=True),
                         threading.Thread(target=self._loop, name=f"nextchar-batch-{name}", daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def reserved(self) -> int:
        return self._reserved

    def reserve(self, job: Job) -> None:
        """Count the job's rows against max_streams, or raise Busy. Call before `start`."""
        with self._cond:
            if self._closed:
                raise Busy("the service is shutting down")
            if self._reserved + job.rows > self.max_streams:
                raise Busy(f"{self._reserved} of {self.max_streams} streams are in use")
            self._reserved += job.rows

    def start(self, job: Job) -> None:
        """Seed the job, draw its first block of noise (Sampler.begin) and queue it for the
        primer. Runs in the caller's thread."""
        try:
            begun = self.sampler.begin(job.config)
            job.seed, job.shown, job._ids, job._blocks = begun.seed, begun.shown, begun.ids, begun.noise
            if not job.config.greedy and job.config.length:
                job._block = next(job._blocks)  # drawn here, not in the batch's threads
        except BaseException:
            self._release(job, "failed")
            raise
        if job.config.length == 0:
            self._release(job, "done")  # the prime alone
            return
        with self._cond:
            self._unprimed.append(job)
            self._cond.notify_all()

    def close(self) -> None:
        """End every job ("cancelled") and stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _release(self, job: Job, reason: str) -> None:
        with self._cond:
            self._reserved -= job.rows
        job._end(reason)

    # ---- the primer thread -------------------------------------------------------------------

    def _prime_loop(self) -> None:
        while True:
            with self._cond:
                while not self._unprimed and not self._closed:
                    self._cond.wait()
                if self._closed:
                    waiting, self._unprimed = self._unprimed, []
                    for job in waiting:
                        self._release(job, "cancelled")
                    return
                waiting, self._unprimed = self._unprimed, []
            by_length: dict[int, list[Job]] = {}
            for job in waiting:
                if job.cancelled:
                    self._release(job, "cancelled")
                else:
                    by_length.setdefault(len(job._ids), []).append(job)
            for jobs in by_length.values():
                try:
                    idx = torch.tensor([job._ids for job in jobs for _ in range(job.rows)],
                                       device=self.sampler.device)  # (B, P)
                    logits, state = self.sampler.prime(idx)
                except Exception:  # a bug: fail these jobs, keep priming the next ones
                    log.exception("priming failed; ending %d job(s)", len(jobs))
                    for job in jobs:
                        self._release(job, "failed")
                    continue
                with self._cond:
                    self._primed.append(Arrival(jobs, logits, state))
                    self._cond.notify_all()

    # ---- the batch thread ----------------------------------------------------------------

    def _loop(self) -> None:
        batch = Batch([], None, None)
        while True:
            with self._cond:
                while not self._primed and not batch.jobs and not self._closed:
                    self._cond.wait()
                arrived, self._primed = self._primed, []
                closed = self._closed
            jobs = batch.jobs + [job for a in arrived for job in a.jobs]
            if closed:
                for job in jobs:
                    self._release(job, "cancelled")
                return
            try:
                batch = self._one_step(batch, arrived)
            except Exception:  # a bug: fail these jobs, keep serving the next ones
                log.exception("the sampling batch failed; ending its %d job(s)", len(jobs))
                for job in jobs:
                    if job.ended is None:
                        self._release(job, "failed")
                batch = Batch([], None, None)

    @torch.inference_mode()
    def _one_step(self, batch: Batch, arrived: list[Arrival]) -> Batch:
        # admit: the primed jobs append their rows (any cancelled or late leave below)
        if arrived:
            old = [batch] if batch.jobs else []
            joining = [job for a in arrived for job in a.jobs]
            state = self.stepper.join([b.state for b in old + arrived])
            logits = torch.cat([b.logits for b in old + arrived])
            batch = Batch(batch.jobs + joining, logits, state, NoiseTable.build(batch, joining, logits))
        if not batch.jobs:
            return batch
        if batch.noise.steps_left == 0:  # a job has read all of its block: on to the next
            batch.noise = NoiseTable.build(batch, [], batch.logits)
        # draw and deliver
        ids = self._draw(batch)  # (B,)
        chars = ids.tolist()
        symbols = self.symbols
        for job, row in zip(batch.jobs, batch.first_rows):  # the hot loop: 64 jobs, 600 steps/s
            if job.rows == 1:
                job.texts[0].append(symbols[chars[row]])
            else:
                for r, text in enumerate(job.texts):
                    text.append(symbols[chars[row + r]])
            job.produced += 1
            if not job._woken:  # Job._signal, inlined
                job._woken = True
                job.wake()
        # leave: finished, cancelled and late jobs (looked for only when one may be there)
        batch.steps_to_end -= 1
        now = time.monotonic()
        if batch.steps_to_end == 0 or now > batch.first_deadline or any(j.cancelled for j in batch.jobs):
            staying, rows = [], []
            for job, first in zip(batch.jobs, batch.first_rows):
                reason = "done" if job.produced >= job.config.length else self._reason_to_leave(job, now)
                if reason:
                    self._release(job, reason)
                else:
                    staying.append(job)
                    rows.extend(range(first, first + job.rows))
            if len(staying) < len(batch.jobs):
                if not staying:
                    return Batch([], None, None)
                keep = torch.tensor(rows, device=ids.device)
                batch = Batch(staying, None, self.stepper.select(batch.state, keep), batch.noise.keep(keep))
                ids = ids[keep]
        # step
        batch.logits, batch.state = self.stepper.step(ids, batch.state)
        self.steps += 1
        self.widest = max(self.widest, len(ids))
        return batch

    @staticmethod
    def _reason_to_leave(job: Job, now: float) -> str | None:
        if job.cancelled:
            return "cancelled"
        if now > job.deadline:
            return "timeout"
        return None

    @staticmethod
    def _draw(batch: Batch) -> torch.Tensor:
        """Each job's next ids from its rows of the logits (B, V) and of the noise (B, V), jobs with
        the same settings in one call of sample.draw (one call for all when they agree, as in
        Sampler.generate)."""
        noise = batch.noise.read()
        if len(batch.groups) == 1:
            (key, _), = batch.groups
            return _draw_group(key, batch.logits, noise)
        ids = torch.empty(batch.logits.size(0), dtype=torch.long, device=batch.logits.device)
        for key, rows in batch.groups:
            ids[rows] = _draw_group(key, batch.logits[rows], noise[rows])
        return ids


def _draw_group(key: tuple, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    greedy, temperature, top_k, top_p = key
    return logits.argmax(-1) if greedy else draw(logits, noise, temperature, top_k, top_p)


class NoiseTable:
    """The Gumbel noise of every row of the batch in one (N, V) table, read a step at a time by
    one index_select: row b of step t sits at cursor[b] + t * stride[b]. Copying each job's block
    in once costs less than slicing 64 blocks a step (2.6 us each here, against 8 us for the one
    gather). Built again when jobs join or a block is used up (rare: a block holds 2**20 values,
    16,000 steps of one stream over 65 symbols); rows that leave only leave the cursor. Row 0 is
    zeros, read by greedy rows."""

    def __init__(self, table: torch.Tensor, cursor: torch.Tensor, stride: torch.Tensor, steps_left: float):
        self.table, self.cursor, self.stride = table, cursor, stride  # (N, V), (B,), (B,)
        self.steps_left = steps_left  # steps until some job's block is used up
        self.steps = 0  # read since built

    @classmethod
    def build(cls, batch: Batch, joining: list[Job], logits: torch.Tensor) -> NoiseTable:
        """A table for batch's jobs (their reading caught up) and the joining ones; `logits`
        (B, V) only tells the vocabulary size and the device."""
        for job in batch.jobs:
            job._at += batch.noise.steps
        V, device = logits.size(-1), logits.device
        parts, cursor, stride, base, steps_left = [torch.zeros(1, V, device=device)], [], [], 1, float("inf")
        for job in batch.jobs + joining:
            if job._block is None:  # greedy
                cursor += [0] * job.rows
                stride += [0] * job.rows
                continue
            if job._at == len(job._block):
                job._block, job._at = next(job._blocks), 0
            rest = job._block[job._at:]  # (n, rows, V)
            parts.append(rest.reshape(-1, V))
            cursor += range(base, base + job.rows)
            stride += [job.rows] * job.rows
            base += rest.size(0) * job.rows
            steps_left = min(steps_left, rest.size(0))
        return cls(torch.cat(parts), torch.tensor(cursor, device=device), torch.tensor(stride, device=device),
                   steps_left)

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


@dataclass
class Arrival:
    """Jobs primed together: their rows' logits (B, V) and StepState, in job order."""

    jobs: list[Job]
    logits: torch.Tensor
    state: StepState


class Batch:
    """The running jobs, in row order, with their logits (B, V), StepState and noise, and what the
    loop needs of their layout, worked out once per change of membership rather than once per
    step: each job's first row, the groups of jobs drawn together, and when one may next leave."""

    def __init__(self, jobs: list[Job], logits: torch.Tensor | None, state: StepState | None,
                 noise: NoiseTable | None = None):
        self.jobs, self.logits, self.state, self.noise = jobs, logits, state, noise
        self.first_rows = list(itertools.accumulate([0] + [job.rows for job in jobs[:-1]]))
        groups: dict[tuple, list[int]] = {}
        for job, first in zip(jobs, self.first_rows):
            c = job.config
            groups.setdefault((c.greedy, c.temperature, c.top_k, c.top_p), []).extend(range(first, first + job.rows))
        self.groups = [(key, torch.tensor(rows)) for key, rows in groups.items()]
        self.steps_to_end = min((job.config.length - job.produced for job in jobs), default=0)
        self.first_deadline = min((job.deadline for job in jobs), default=float("inf"))
