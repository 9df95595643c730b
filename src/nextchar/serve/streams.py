"""A running job, seen from the event loop: its wake-ups from the batch thread, its text as
server-sent events (or its end awaited, for a JSON answer), and the response that cancels it
however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..config import SampleConfig
from ..jobs import Job
from .bodies import ApiError

STREAM_FLUSH_S = 0.05  # a stream sends what it has at most every 50 ms (the first at once)
FLUSHES_PER_S = 640  # and all streams together at most this often: 100 ms each for 64 streams
_streaming = 0  # event streams open in this process


def flush_interval(streams: int) -> float:
    """Seconds a stream lets characters gather while `streams` are open: STREAM_FLUSH_S, longer
    when many stream at once. Each flush is a turn of the event loop, whose CPU time and hold on
    the GIL the batched step then waits for: at 64 streams, 100 ms instead of 50 ms served 10%
    more characters a second (BENCHMARKS.md)."""
    return max(STREAM_FLUSH_S, streams / FLUSHES_PER_S)


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


_ENDED = {
    "timeout": (
        503,
        "length",
        "the request ran past the service's {timeout:g} s limit "
        "(--request-timeout); ask for fewer characters",
    ),
    "cancelled": (503, None, "the service is shutting down"),
    "failed": (500, None, "internal error while sampling; the service log has the details"),
}


def ended_error(reason: str, timeout: float) -> ApiError:
    """The error a job ended for `reason` is answered with (`timeout`: --request-timeout)."""
    status, name, message = _ENDED[reason]
    return ApiError(status, name, message.format(timeout=timeout))


def start_job(config: SampleConfig, timeout: float) -> tuple[Job, Wakeups]:
    """A job whose batch thread wakes this event loop (at its first characters and its end)."""
    wakeups = Wakeups()
    return Job(config, time.monotonic() + timeout, wakeups.from_thread), wakeups


async def events(job: Job, wakeups: Wakeups, name: str, timeout: float):
    """start, then text chunks as they are drawn, then done (or error)."""
    global _streaming
    yield _sse(
        "start", {"model": name, "seed": job.seed, "prime": job.prime, "num_samples": job.rows}
    )
    _streaming += 1
    try:
        await wakeups.wait()  # the first characters, or the end
        while True:
            ended = job.ended  # before reading: everything drawn before it ended is read
            for row, text in enumerate(job.read()):
                if text:
                    yield _sse("text", {"sample": row, "text": text})
            if ended == "done":
                yield _sse("done", {"chars": job.produced})
                return
            if ended:
                error = ended_error(ended, timeout)
                yield _sse("error", {"error": {"field": error.field, "message": error.message}})
                return
            await wakeups.wait(flush_interval(_streaming))  # characters gather (unless it ends)
    finally:
        _streaming -= 1


class JobStream(StreamingResponse):
    """A job's server-sent events. However the response ends (done, or the client gone, which
    Starlette answers by cancelling it, even before the first event), the job is cancelled, so
    its rows leave the batch at the next step."""

    def __init__(self, job: Job, events):
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # a no-op once it ended


async def finished_or_gone(job: Job, wakeups: Wakeups, request: Request) -> bool:
    """Wait for the job to end (True) or the client to hang up (False)."""

    async def finished() -> None:
        while job.ended is None:
            await wakeups.wait()

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(finished()), asyncio.ensure_future(gone())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return tasks[0] in done


class Wakeups:
    """The event loop's side of a job's wake-ups: the batch thread calls `from_thread`, a reader
    awaits `wait`. One future and at most one timer per wait (asyncio.wait_for would start a task
    for every pause of every stream)."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.pending = False  # woken while nobody waited: the next wait returns at once
        self.waiter: asyncio.Future | None = None

    def from_thread(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to wake
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self.waiter is None:
            self.pending = True
        else:
            _resolve(self.waiter)

    async def wait(self, timeout: float | None = None) -> None:
        """Until woken, or `timeout` seconds; a wake-up that came before returns at once."""
        if self.pending:
            self.pending = False
            return
        self.waiter = self.loop.create_future()
        timer = None if timeout is None else self.loop.call_later(timeout, _resolve, self.waiter)
        try:
            await self.waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
