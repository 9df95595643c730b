"""The ASGI app: the routes, each a method of Service, over the models it serves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..api import Model, load
from ..batching import Batcher, Busy
from ..config import DynamicConfig, SampleConfig
from ..config import ServeLimits as Limits
from ..errors import UserError
from ..jobs import Job
from ..report.analysis import analyse
from ..runfolder import RunFolder
from ..sample import Sampler, check_sample_precision, sample_precision
from .bodies import JSON, ApiError, GenerateBody, ScoreBody, read_json, sample_config, score_summary

STREAM_FLUSH_S = 0.05  # a stream sends what it has at most every 50 ms (the first at once)
AUTO_PRECISION_STREAMS = 64  # `auto` picks the weight format that is fastest for this many streams
WORKERS = 2  # requests started (seeds, first noise) and texts scored at once, beside the batches


@dataclass
class Served:
    """One run being served: its model, its batch, and what /v1/models says about it."""

    name: str
    model: Model
    batcher: Batcher
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab(self):
        return self.model.vocab


def _best_val_bits(folder: RunFolder) -> float | None:
    """The run's best validation bits/char: its final record's, else its best evaluation's."""
    records = folder.read_metrics()
    finals = [r for r in records if r.get("kind") == "final" and isinstance(r.get("val"), dict)]
    if finals and isinstance(finals[-1]["val"].get("bits_per_char"), (int, float)):
        return float(finals[-1]["val"]["bits_per_char"])
    evals = [
        r["val_bpc"]
        for r in records
        if r.get("kind") == "eval" and isinstance(r.get("val_bpc"), (int, float))
    ]
    return float(min(evals)) if evals else None


def named_runs(runs: list[str]) -> list[tuple[str, str]]:
    """RUN or NAME=RUN -> (name, path); a name defaults to the folder's name."""
    named = []
    for item in runs:
        name, sep, path = item.partition("=")
        if not sep or Path(item).exists():
            name, path = Path(item).resolve().name, item
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise UserError(
                f"model name {name!r} (from {item}) must be 1-64 letters, digits, '.', "
                f"'_' or '-'; name it with NAME={path}"
            )
        named.append((name, path))
    names = [n for n, _ in named]
    for name in names:
        if names.count(name) > 1:
            raise UserError(
                f"two runs would both be served as {name!r}; name them apart with NAME=RUN"
            )
    return named


def load_models(
    runs: list[str],
    limits: Limits,
    precision: str = "auto",
    checkpoint: str = "best",
    device: str = "cpu",
    say=lambda line: None,
) -> list[Served]:
    """Load every run (all of them before anything starts), settle each one's weight format and
    start its batch."""
    loaded = []
    for name, path in named_runs(runs):
        model = load(path, checkpoint, device)
        RunFolder(path).check_data()
        check_sample_precision(precision, model.module)
        loaded.append((name, path, model))
    served = []
    for name, path, model in loaded:
        choice = sample_precision(
            precision, model.module, min(AUTO_PRECISION_STREAMS, limits.max_streams)
        )
        m = model.config.model
        info = {
            "name": name,
            "cell": m.cell,
            "layers": m.layers,
            "hidden": m.hidden,
            "embed": m.embed,
            "vocab_size": len(model.vocab),
            "parameters": model.module.num_parameters(),
            "best_val_bits_per_char": _best_val_bits(RunFolder(path)),
            "checkpoint_step": model.meta.get("step"),
            "precision": choice.value,
        }
        batcher = Batcher(
            Sampler(model.module, model.vocab, choice.value), limits.max_streams, name
        )
        served.append(Served(name, model, batcher, info))
        say(
            f"model {name}: {m.cell} {m.layers}x{m.hidden}, {len(model.vocab)} symbols, "
            f"{choice.value} weights ({choice.how}), from {path}"
        )
    return served


def _page_files() -> dict[str, tuple[bytes, str]]:
    """The page's three files (path -> body, media type); its CSS starts with the report's."""
    web = resources.files("nextchar") / "web"
    css = (
        (resources.files("nextchar") / "report" / "page.css").read_text(encoding="utf-8")
        + "\n"
        + (web / "page.css").read_text(encoding="utf-8")
    )
    return {
        "/": ((web / "index.html").read_bytes(), "text/html; charset=utf-8"),
        "/page.css": (css.encode("utf-8"), "text/css; charset=utf-8"),
        "/page.js": ((web / "page.js").read_bytes(), "text/javascript; charset=utf-8"),
    }


# nothing but this origin: the page loads no fonts, scripts or styles from the network
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


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


def create_app(
    models: list[Served], limits: Limits | None = None, api_key: str | None = None
) -> Starlette:
    """The ASGI app serving `models` (the first is the default)."""
    service = Service(models, limits or Limits(), api_key)
    return Starlette(
        routes=service.routes(),
        lifespan=service.lifespan,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )


class Service:
    """The handlers of the routes, over the models served, the limits and the API key (None:
    no key needed)."""

    def __init__(self, models: list[Served], limits: Limits, api_key: str | None):
        self.models, self.limits, self.api_key = models, limits, api_key
        self.by_name = {m.name: m for m in models}
        self.page = _page_files()
        self.workers = anyio.CapacityLimiter(WORKERS)

    def routes(self) -> list[Route]:
        return [
            *(Route(path, self.page_file) for path in self.page),
            Route("/healthz", self.healthz),
            Route("/v1/models", self.endpoint(self.list_models)),
            Route("/v1/generate", self.endpoint(self.generate), methods=["POST"]),
            Route("/v1/score", self.endpoint(self.score), methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        yield
        for m in self.models:
            await anyio.to_thread.run_sync(m.batcher.close)

    def ended_error(self, reason: str) -> ApiError:
        status, name, message = _ENDED[reason]
        return ApiError(status, name, message.format(timeout=self.limits.request_timeout))

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(
                401,
                "authorization",
                "this service needs 'Authorization: Bearer <key>' with its API key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def pick(self, name: str | None) -> Served:
        if name is None:
            return self.models[0]
        if name not in self.by_name:
            raise ApiError(
                422,
                "model",
                f"no model {name!r} here; this service has "
                f"{', '.join(repr(n) for n in self.by_name)} (GET /v1/models)",
            )
        return self.by_name[name]

    def endpoint(self, handler):
        """Errors as JSON; a client gone before its answer is no error."""

        async def wrapped(request: Request) -> Response:
            try:
                self.authorize(request)
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except TimeoutError:
                return ApiError(408, "body", "the body did not arrive in time").response()
            except ClientDisconnect:
                return Response(status_code=499)  # nobody is left to read it

        return wrapped

    async def page_file(self, request: Request) -> Response:
        body, media = self.page[request.url.path]
        return Response(
            body,
            media_type=media,
            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"},
        )

    async def healthz(self, request: Request) -> Response:
        return JSON(
            {
                "status": "ok",
                "models": len(self.models),
                "streams": sum(m.batcher.reserved for m in self.models),
                "max_streams": self.limits.max_streams,
            }
        )

    async def list_models(self, request: Request) -> Response:
        return JSON({"models": [m.info for m in self.models]})

    async def generate(self, request: Request) -> Response:
        body = await read_json(request, self.limits, GenerateBody)
        served = self.pick(body.model)
        job, wakeups = self._job(sample_config(body, served.vocab, self.limits))
        try:
            served.batcher.reserve(job)
        except Busy as exc:
            raise ApiError(
                503,
                "num_samples",
                f"the service is at capacity ({exc}); try again shortly",
                headers={"Retry-After": "1"},
            ) from None
        try:
            await anyio.to_thread.run_sync(served.batcher.start, job, limiter=self.workers)
        except BaseException:
            job.cancel()
            raise
        streamed = body.stream or "text/event-stream" in request.headers.get("accept", "")
        if streamed:
            return JobStream(job, self.events(job, wakeups, served.name))
        try:
            if not await _finished_or_gone(job, wakeups, request):
                return Response(status_code=499)
        finally:
            job.cancel()  # a no-op once it ended
        if job.ended != "done":
            raise self.ended_error(job.ended)
        return JSON(
            {
                "model": served.name,
                "seed": job.seed,
                "prime": job.prime,
                "samples": [job.text(r) for r in range(job.rows)],
            }
        )

    def _job(self, config: SampleConfig) -> tuple[Job, Wakeups]:
        """A job whose batch thread wakes this event loop (at its first characters and its end)."""
        wakeups = Wakeups()
        job = Job(config, time.monotonic() + self.limits.request_timeout, wakeups.from_thread)
        return job, wakeups

    async def events(self, job: Job, wakeups: Wakeups, name: str):
        """start, then text chunks as they are drawn, then done (or error)."""
        yield _sse(
            "start", {"model": name, "seed": job.seed, "prime": job.prime, "num_samples": job.rows}
        )
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
                error = self.ended_error(ended)
                yield _sse("error", {"error": {"field": error.field, "message": error.message}})
                return
            await wakeups.wait(STREAM_FLUSH_S)  # let a few characters gather (unless it ends)

    async def score(self, request: Request) -> Response:
        body = await read_json(request, self.limits, ScoreBody)
        served = self.pick(body.model)
        if len(body.text) > self.limits.max_text:
            raise ApiError(
                422,
                "text",
                f"text has {len(body.text):,} characters; this service "
                f"scores at most {self.limits.max_text:,} (--max-text)",
            )
        analysis = await anyio.to_thread.run_sync(
            analyse, served.model.module, served.vocab, body.text, limiter=self.workers
        )
        answer = {"model": served.name, **score_summary(analysis)}
        if body.dynamic:  # a figure of its own beside the static one, never mixed into it
            dynamic = DynamicConfig()
            with anyio.fail_after(self.limits.request_timeout):
                result = await anyio.to_thread.run_sync(
                    functools.partial(served.model.evaluate, body.text, dynamic=dynamic),
                    limiter=self.workers,
                )
            answer["dynamic"] = {
                "chars": result.chars,
                "bits_per_char": result.bits_per_char,
                "nats_per_char": result.nats_per_char,
                "perplexity": result.perplexity,
                "accuracy": result.accuracy,
                "lr": dynamic.lr,
                "decay": dynamic.decay,
                "window": dynamic.window,
            }
        return JSON(answer)


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


async def _not_found(request: Request, exc) -> Response:
    return ApiError(
        404,
        None,
        f"no such path {request.url.path}; see GET /v1/models, POST /v1/generate, POST /v1/score",
    ).response()


async def _not_allowed(request: Request, exc) -> Response:
    return ApiError(405, None, f"{request.method} is not allowed on {request.url.path}").response()


async def _finished_or_gone(job: Job, wakeups: Wakeups, request: Request) -> bool:
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
    for every 50 ms pause of every stream)."""

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
