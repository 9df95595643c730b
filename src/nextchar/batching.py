"""Many sampling requests, one batched step: `nextchar serve`'s engine, without the HTTP.

    request -> Job -> Batcher.start(job)      Sampler.begin: its seed, generator, prime, noise
                        |                     (in the caller's thread, not the batch's)
                        v
    Batcher thread, one loop per step:
        admit    jobs that arrived join the batch: their rows are appended (StepModel.join)
        draw     each job's next characters from the shared logits, with its own noise and
                 settings (jobs with the same settings drawn in one call)
        deliver  the characters to each job; wake its reader
        leave    finished, cancelled and late jobs drop out (StepModel.select)
        step     one StepModel.step for every row left

A job alone in the batch runs the very operations of `Sampler.generate` (B = its samples), so it
gives the text of `nextchar sample` with the same seed and precision. Beside other jobs, its rows
are drawn from its own noise with its own settings, but the matrix products run over the whole
batch, and a batched product rounds differently in the last bit than a lone one (about 1e-7 in
fp32): the text is drawn from the same distribution and is almost always the same, but a near
tie between two characters can go the other way, and the texts part from there on.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator

import torch

from .config import SampleConfig
from .sample import Sampler, StepState, draw

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
        self.noise: Iterator[torch.Tensor] | None = None  # (rows, V) Gumbel noise per step
        self._ready: tuple[torch.Tensor, StepState] | None = None  # logits, state after the prime
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
        self.noise = self._ready = None  # free the noise and the prime's state now
        self._woken = False
        self._signal()


class Batcher:
    """A thread that steps every running job of one model as one batch (see the module doc).

    `sampler` must hold a named weight format (fp32, bf16 or int8, not auto): a batch that
    changes size keeps one format."""

    def __init__(self, sampler: Sampler, max_streams: int, name: str = "model"):
        if sampler.precision == "auto":
            raise ValueError("Batcher needs a named precision; resolve auto first")
        self.sampler = sampler
        self.stepper = sampler.stepper(1)  # one format for every batch size
        self.max_streams = max_streams
        self.symbols = sampler.vocab.symbols
        self._cond = threading.Condition()
        self._incoming: list[Job] = []
        self._reserved = 0  # rows of jobs accepted and not yet ended
        self._closed = False
        self.steps = 0  # batched steps taken
        self.widest = 0  # the most rows stepped together so far
        self._thread = threading.Thread(target=self._loop, name=f"nextchar-batch-{name}", daemon=True)
        self._thread.start()

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
        """Prime the job (seed, prime, noise: Sampler.begin) and queue it to join the batch at the
        next step. Runs in the caller's thread, so a long prime does not stall the batch."""
        try:
            if not job.cancelled:
                begun = self.sampler.begin(job.config)
                noise = begun.noise
                if not job.config.greedy and job.config.length:
                    # draw the first block of noise here too, not in the batch thread
                    noise = itertools.chain([next(noise)], noise)
                job.seed, job.shown, job.noise = begun.seed, begun.shown, noise
                job._ready = (begun.logits, begun.state)
        except BaseException:
            self._release(job, "failed")
            raise
        with self._cond:
            self._incoming.append(job)
            self._cond.notify()

    def close(self) -> None:
        """End every job ("cancelled") and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _release(self, job: Job, reason: str) -> None:
        with self._cond:
            self._reserved -= job.rows
        job._end(reason)

    # ---- the batch thread ----------------------------------------------------------------

    def _loop(self) -> None:
        active: list[Job] = []
        logits, state = None, None  # (B, V) and the StepState of the active rows
        while True:
            with self._cond:
                while not self._incoming and not active and not self._closed:
                    self._cond.wait()
                arrived, self._incoming = self._incoming, []
                closed = self._closed
            if closed:
                for job in active + arrived:
                    self._release(job, "cancelled")
                return
            try:
                logits, state, active = self._one_step(active, arrived, logits, state)
            except Exception:  # a bug: fail these jobs, keep serving the next ones
                log.exception("the sampling batch failed; ending its %d job(s)", len(active + arrived))
                for job in active + arrived:
                    if job.ended is None:
                        self._release(job, "failed")
                active, logits, state = [], None, None

    @torch.inference_mode()
    def _one_step(self, active: list[Job], arrived: list[Job], logits, state):
        now = time.monotonic()
        # admit: the jobs that arrived append their rows
        joining = []
        for job in arrived:
            reason = self._reason_to_leave(job, now)
            if reason:
                self._release(job, reason)
            elif job.config.length == 0:
                self._release(job, "done")
            else:
                joining.append(job)
        if joining:
            state = self.stepper.join(([state] if active else []) + [j._ready[1] for j in joining])
            logits = torch.cat(([logits] if active else []) + [j._ready[0] for j in joining])
            for job in joining:
                job._ready = None
            active = active + joining
        if not active:
            return None, None, []
        # draw and deliver
        ids = self._draw(active, logits)  # (B,)
        chars = ids.tolist()
        row = 0
        for job in active:
            for r in range(job.rows):
                job.texts[r].append(self.symbols[chars[row + r]])
            row += job.rows
            job.produced += 1
            job._signal()
        # leave
        now = time.monotonic()
        staying, rows, row = [], [], 0
        for job in active:
            reason = "done" if job.produced >= job.config.length else self._reason_to_leave(job, now)
            if reason:
                self._release(job, reason)
            else:
                staying.append(job)
                rows.extend(range(row, row + job.rows))
            row += job.rows
        if len(staying) < len(active):
            if not staying:
                return None, None, []
            keep = torch.tensor(rows, device=ids.device)
            state, ids = self.stepper.select(state, keep), ids[keep]
        # step
        logits, state = self.stepper.step(ids, state)
        self.steps += 1
        self.widest = max(self.widest, len(ids))
        return logits, state, staying

    @staticmethod
    def _reason_to_leave(job: Job, now: float) -> str | None:
        if job.cancelled:
            return "cancelled"
        if now > job.deadline:
            return "timeout"
        return None

    def _draw(self, active: list[Job], logits: torch.Tensor) -> torch.Tensor:
        """Each job's next ids from its rows of `logits` (B, V): jobs with the same settings in
        one call of sample.draw (one call for all when they agree, as in Sampler.generate)."""
        groups: dict[tuple, list[tuple[int, Job]]] = {}
        row = 0
        for job in active:
            c = job.config
            groups.setdefault((c.greedy, c.temperature, c.top_k, c.top_p), []).append((row, job))
            row += job.rows
        if len(groups) == 1:
            (key, members), = groups.items()
            return self._draw_group(key, [job for _, job in members], logits)
        ids = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
        for key, members in groups.items():
            rows = torch.cat([torch.arange(r, r + job.rows) for r, job in members]).to(logits.device)
            ids[rows] = self._draw_group(key, [job for _, job in members], logits[rows])
        return ids

    @staticmethod
    def _draw_group(key: tuple, jobs: list[Job], logits: torch.Tensor) -> torch.Tensor:
        greedy, temperature, top_k, top_p = key
        if greedy:
            return logits.argmax(-1)
        noise = [next(job.noise) for job in jobs]  # (rows, V) each
        return draw(logits, noise[0] if len(noise) == 1 else torch.cat(noise), temperature, top_k, top_p)
