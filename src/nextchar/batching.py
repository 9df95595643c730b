"""Many sampling requests, one batched step: `nextchar serve`'s engine, without the HTTP.

    request -> Job -> Batcher.start(job)   its samples' Streams (row_seed), the prime ids or
                         |                 each row's drawn first character, the first noise
                         v                 blocks (in the caller's thread)
    primer thread        the jobs waiting to join: one run per distinct prime (Sampler.run_prime,
                         as Sampler.start), one forward call for every drawn first character,
                         so a burst of 64 requests costs a few calls, not 64
                         |
                         v
    batch thread, one loop per step:
        admit    primed jobs join the batch: their rows are appended (StepModel.join)
        draw     each row's next character from the shared logits with its own stream's noise
                 (read for all rows at once, NoiseTable) and its job's settings (jobs with the
                 same settings drawn in one call)
        deliver  the characters to each job; wake its reader at the first ones
        leave    finished, cancelled and late jobs drop out (StepModel.select)
        step     one StepModel.step for every row left

Each sample draws from its own generator, as in `Sampler.generate`, so a request alone gives the
text of `nextchar sample` with the same seed and weight format. Beside other requests, its
samples still draw the same random numbers, and a prime they share is run once for all, but the
steps (and first characters drawn at random) run in products over more rows, which round
differently in the last bit than over fewer (about 1e-7 in fp32): the text comes from the same
distribution and is almost always the same, but a near tie between two characters can go the
other way, and the texts part from there on.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch

from .jobs import Arrival, Batch, Job, NoiseTable
from .sample import Sampler, Stream, draw, row_seed

log = logging.getLogger("nextchar.serve")


class Busy(Exception):
    """The batch has no room for a job's rows (the --max-streams limit)."""


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
        self._cond = threading.Condition()  # guards everything below (re-entrant)
        self._unprimed: list[Job] = []  # started, waiting for the primer
        self._primed: list[Arrival] = []  # primed, waiting to join the batch
        self._reserved = 0  # rows of jobs accepted and not yet ended
        self._closed = False
        self.steps = 0  # batched steps taken
        self.widest = 0  # the most rows stepped together so far
        self._threads = [
            threading.Thread(target=self._prime_loop, name=f"nextchar-prime-{name}", daemon=True),
            threading.Thread(target=self._loop, name=f"nextchar-batch-{name}", daemon=True),
        ]
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
        """Seed the job's samples, settle what they read first, draw their first noise blocks, and
        queue the job for the primer. Runs in the caller's thread; the random draws come in the
        order Sampler.generate makes them (a first character, then noise)."""
        try:
            config = job.config
            job.seed = (
                config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
            )
            steps = 0 if config.greedy else config.length
            job.streams = [
                Stream(row_seed(job.seed, row), len(self.symbols), steps) for row in range(job.rows)
            ]
            shared = self.sampler.shared_prime(config.prime, config.unknown)
            if shared is not None:
                job.prime_ids, job.prime = shared
            else:
                for text, stream in zip(job.texts, job.streams):
                    text.append(self.symbols[stream.first_id()])
                job.leading = 1
            if not config.greedy and config.length:
                for stream in job.streams:
                    stream.rest()  # the first block is drawn here, not in the batch's threads
        except BaseException:
            self._release(job, "failed")
            raise
        if config.length == 0:
            self._release(job, "done")  # the prime (or first character) alone
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
        job.end(reason)

    # ---- the primer thread -------------------------------------------------------------------

    def _prime_loop(self) -> None:
        while True:
            with self._cond:
                while not self._unprimed and not self._closed:
                    self._cond.wait()
                waiting, self._unprimed = self._unprimed, []
                if self._closed:
                    for job in waiting:
                        self._release(job, "cancelled")
                    return
            groups: dict[tuple | None, list[Job]] = {}
            for job in waiting:
                if job.cancelled:
                    self._release(job, "cancelled")
                else:
                    groups.setdefault(
                        None if job.prime_ids is None else tuple(job.prime_ids), []
                    ).append(job)
            for ids, jobs in groups.items():
                try:
                    arrival = self._prime(ids, jobs)
                except Exception:  # a bug: fail these jobs, keep priming the next ones
                    log.exception("priming failed; ending %d job(s)", len(jobs))
                    for job in jobs:
                        self._release(job, "failed")
                    continue
                with self._cond:
                    self._primed.append(arrival)
                    self._cond.notify_all()

    @torch.inference_mode()
    def _prime(self, ids: tuple | None, jobs: list[Job]) -> Arrival:
        """Prime the rows of `jobs` as Sampler.start does: a prime they share (`ids`) run once
        and copied to every row, or each row's drawn first character, all in one call."""
        B = sum(job.rows for job in jobs)
        if ids is not None:
            logits, hidden = self.sampler.run_prime(list(ids))  # (1, V), (L, 1, H)
            expand = lambda t: t.expand(t.size(0), B, t.size(2)).contiguous()  # noqa: E731
            hidden = (
                tuple(expand(h) for h in hidden) if isinstance(hidden, tuple) else expand(hidden)
            )
            logits = logits.expand(B, -1)
        else:
            index = self.sampler.vocab.index
            firsts = [index[text[0]] for job in jobs for text in job.texts]
            logits, hidden = self.sampler.model(
                torch.tensor(firsts, device=self.sampler.device)[:, None]
            )
            logits = logits[:, -1].float()  # (B, V)
        return Arrival(jobs, logits, self.stepper.from_module_hidden(hidden))

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
            batch = Batch(
                batch.jobs + joining, logits, state, NoiseTable.build(batch, joining, logits)
            )
        if not batch.jobs:
            return batch
        if batch.noise.steps_left == 0:  # a row has read all of its window: on to the next
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
            if job.produced == 1:  # its first characters; then its reader reads at its own pace
                job.wake()
        # leave: finished, cancelled and late jobs (looked for only when one may be there)
        batch.steps_to_end -= 1
        now = time.monotonic()
        if (
            batch.steps_to_end == 0
            or now > batch.first_deadline
            or any(j.cancelled for j in batch.jobs)
        ):
            staying, rows = [], []
            for job, first in zip(batch.jobs, batch.first_rows):
                reason = (
                    "done" if job.produced >= job.config.length else self._reason_to_leave(job, now)
                )
                if reason:
                    self._release(job, reason)
                else:
                    staying.append(job)
                    rows.extend(range(first, first + job.rows))
            if len(staying) < len(batch.jobs):
                if not staying:
                    return Batch([], None, None)
                keep = torch.tensor(rows, device=ids.device)
                batch = Batch(
                    staying, None, self.stepper.select(batch.state, keep), batch.noise.keep(keep)
                )
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
        """Each row's next id from its logits (B, V) and its noise (B, V), jobs with the same
        settings in one call of sample.draw (one call for all when they agree, as in
        Sampler.generate)."""
        noise = batch.noise.read()
        if len(batch.groups) == 1:
            ((key, _),) = batch.groups
            return _draw_group(key, batch.logits, noise)
        ids = torch.empty(batch.logits.size(0), dtype=torch.long, device=batch.logits.device)
        for key, rows in batch.groups:
            ids[rows] = _draw_group(key, batch.logits[rows], noise[rows])
        return ids


def _draw_group(key: tuple, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    greedy, temperature, top_k, top_p = key
    return logits.argmax(-1) if greedy else draw(logits, noise, temperature, top_k, top_p)
