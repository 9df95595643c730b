"""`nextchar serve`: trained runs behind an HTTP API and a web page (Starlette on uvicorn).

    GET  /               the page: generate as it streams, shade pasted text by surprisal
    GET  /healthz        {"status": "ok", ...}; no key needed (for load balancers)
    GET  /v1/models      the models served: name, cell, sizes, vocabulary, best val bits/char
    POST /v1/generate    text as JSON, or as server-sent events with "stream": true
    POST /v1/score       bits/char, perplexity, per-character surprisal and top-5 guesses

Sampling requests of one model share one batched step (batching.py): a request joins the running
batch at the next step and leaves when it is done or its client goes away. Bad requests get a
4xx JSON error that names the field, {"error": {"field": ..., "message": ...}}, and touch no
other stream. docs/serving.md is the user's guide: the API with examples, limits, security.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hmac
import ipaddress
import json
import logging
import math
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import anyio
import h11
import uvicorn
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .api import Model, load
from .batching import Batcher, Busy, Job
from .config import API_KEY_ENV, UNKNOWN_POLICIES, DynamicConfig, SampleConfig
from .config import ServeLimits as Limits
from .errors import UserError
from .report.analysis import LN2, Analysis, analyse
from .runfolder import RunFolder
from .sample import Sampler, check_prime, check_sample_precision, sample_precision

log = logging.getLogger("nextchar.serve")

STREAM_FLUSH_S = 0.05  # a stream sends what it has at most every 50 ms (the first at once)
AUTO_PRECISION_STREAMS = 64  # `auto` picks the weight format that is fastest for this many streams
WORKERS = 2  # requests started (seeds, first noise) and texts scored at once, beside the batches
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


class JSON(JSONResponse):
    """JSON as UTF-8; a text that echoes a lone surrogate (valid in JSON's \\uD800, not in
    UTF-8) is sent with every non-ASCII character escaped instead."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class ApiError(Exception):
    """A request the service refuses: an HTTP status and the field to blame."""

    def __init__(self, status: int, field_name: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field_name, message, headers

    def response(self) -> JSON:
        return JSON({"error": {"field": self.field, "message": self.message}}, self.status,
                            headers=self.headers)


# ---- the request bodies ------------------------------------------------------------------------

class GenerateBody(BaseModel):
    """POST /v1/generate. Types are strict (5.0 is not a length, "5" is not a number); ranges are
    SampleConfig's (the same as `nextchar sample`'s flags) and the service's Limits."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None  # default: the first model served
    prime: str = ""
    length: int = 500
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    greedy: bool = False
    seed: int | None = None
    num_samples: int = 1
    unknown: Literal[UNKNOWN_POLICIES] = "error"
    stream: bool = False


class ScoreBody(BaseModel):
    """POST /v1/score."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    text: str
    dynamic: bool = False


_EXPECTED = {"int_type": "a whole number", "int_parsing": "a whole number", "float_type": "a number",
             "bool_type": "true or false", "string_type": "a string"}


def _validation_error(exc: ValidationError, schema: type[BaseModel]) -> ApiError:
    """The first problem pydantic found, as an ApiError naming its field."""
    problem = exc.errors(include_url=False)[0]
    name = ".".join(str(part) for part in problem["loc"]) or "body"
    shown = repr(problem.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    kind = problem["type"]
    if kind == "extra_forbidden":
        return ApiError(422, name, f"unknown field {name!r}; the fields are {', '.join(schema.model_fields)}")
    if kind == "missing":
        return ApiError(422, name, f"{name} is required")
    if kind in _EXPECTED:
        return ApiError(422, name, f"{name} must be {_EXPECTED[kind]}, got {shown}")
    return ApiError(422, name, f"{name}: {problem['msg']}, got {shown}")


_FLAG = re.compile(r"--([a-z][a-z-]*)")


def _config_error(exc: UserError, name: str | None = None) -> ApiError:
    """A SampleConfig or check_prime error ("--top-p must be in (0, 1], ...") in the API's words,
    blaming `name` or else the first flag it names."""
    message = str(exc).replace("use --unknown skip", 'send "unknown": "skip"')
    flag = _FLAG.search(message)
    name = name or (flag.group(1).replace("-", "_") if flag else "body")
    return ApiError(422, name, _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message))


async def read_json(request: Request, limits: Limits, schema: type[BaseModel]) -> Any:
    """The request body, size-limited and parsed into `schema`, or an ApiError."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        # also what keeps a web page elsewhere from posting here without a CORS preflight
        raise ApiError(415, "content-type", f"send the body as JSON with the header "
                       f"'Content-Type: application/json' (got {kind or 'none'!r})")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body):
        raise ApiError(413, "body", f"the body is {declared} bytes; this service takes at most "
                       f"{limits.max_body:,} (--max-body)")
    chunks, size = [], 0
    with anyio.fail_after(limits.request_timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body:
                raise ApiError(413, "body", f"the body is over {limits.max_body:,} bytes, the "
                               f"most this service takes (--max-body)")
            chunks.append(chunk)
    try:
        value = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        detail = f" ({exc.msg} at line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, "body", f"the body is not valid JSON{detail}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "body", f"the body must be a JSON object, got {type(value).__name__}")
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        raise _validation_error(exc, schema) from None


# ---- the models --------------------------------------------------------------------------------

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
    evals = [r["val_bpc"] for r in records if r.get("kind") == "eval" and isinstance(r.get("val_bpc"), (int, float))]
    return float(min(evals)) if evals else None


def _named_runs(runs: list[str]) -> list[tuple[str, str]]:
    """RUN or NAME=RUN -> (name, path); a name defaults to the folder's name."""
    named = []
    for item in runs:
        name, sep, path = item.partition("=")
        if not sep or Path(item).exists():
            name, path = Path(item).resolve().name, item
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise UserError(f"model name {name!r} (from {item}) must be 1-64 letters, digits, '.', "
                            f"'_' or '-'; name it with NAME={path}")
        named.append((name, path))
    names = [n for n, _ in named]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"two runs would both be served as {name!r}; name them apart with NAME=RUN")
    return named


def load_models(runs: list[str], limits: Limits, precision: str = "auto", checkpoint: str = "best",
                device: str = "cpu", say=lambda line: None) -> list[Served]:
    """Load every run (all of them before anything starts), settle each one's weight format and
    start its batch."""
    loaded = []
    for name, path in _named_runs(runs):
        model = load(path, checkpoint, device)
        RunFolder(path).check_data()
        check_sample_precision(precision, model.module)
        loaded.append((name, path, model))
    served = []
    for name, path, model in loaded:
        choice = sample_precision(precision, model.module, min(AUTO_PRECISION_STREAMS, limits.max_streams))
        m = model.config.model
        info = {"name": name, "cell": m.cell, "layers": m.layers, "hidden": m.hidden, "embed": m.embed,
                "vocab_size": len(model.vocab), "parameters": model.module.num_parameters(),
                "best_val_bits_per_char": _best_val_bits(RunFolder(path)),
                "checkpoint_step": model.meta.get("step"), "precision": choice.value}
        batcher = Batcher(Sampler(model.module, model.vocab, choice.value), limits.max_streams, name)
        served.append(Served(name, model, batcher, info))
        say(f"model {name}: {m.cell} {m.layers}x{m.hidden}, {len(model.vocab)} symbols, "
            f"{choice.value} weights ({choice.how}), from {path}")
    return served


# ---- the app -----------------------------------------------------------------------------------

def _page_files() -> dict[str, tuple[bytes, str]]:
    """The page's three files (path -> body, media type); its CSS starts with the report's."""
    web = resources.files("nextchar") / "web"
    css = ((resources.files("nextchar") / "report" / "page.css").read_text(encoding="utf-8") + "\n"
           + (web / "page.css").read_text(encoding="utf-8"))
    return {"/": ((web / "index.html").read_bytes(), "text/html; charset=utf-8"),
            "/page.css": (css.encode("utf-8"), "text/css; charset=utf-8"),
            "/page.js": ((web / "page.js").read_bytes(), "text/javascript; charset=utf-8")}


# nothing but this origin: the page loads no fonts, scripts or styles from the network
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


_ENDED = {"timeout": (503, "length", "the request ran past the service's {timeout:g} s limit "
                      "(--request-timeout); ask for fewer characters"),
          "cancelled": (503, None, "the service is shutting down"),
          "failed": (500, None, "internal error while sampling; the service log has the details")}


def create_app(models: list[Served], limits: Limits | None = None, api_key: str | None = None) -> Starlette:
    """The ASGI app serving `models` (the first is the default)."""
    limits = limits or Limits()
    by_name = {m.name: m for m in models}
    page = _page_files()
    workers = anyio.CapacityLimiter(WORKERS)

    def ended_error(reason: str) -> ApiError:
        status, name, message = _ENDED[reason]
        return ApiError(status, name, message.format(timeout=limits.request_timeout))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "authorization", "this service needs 'Authorization: Bearer <key>' "
                           "with its API key", headers={"WWW-Authenticate": "Bearer"})

    def pick(name: str | None) -> Served:
        if name is None:
            return models[0]
        if name not in by_name:
            raise ApiError(422, "model", f"no model {name!r} here; this service has "
                           f"{', '.join(repr(n) for n in by_name)} (GET /v1/models)")
        return by_name[name]

    def endpoint(handler):
        """Errors as JSON; a client gone before its answer is no error."""
        async def wrapped(request: Request) -> Response:
            try:
                authorize(request)
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except TimeoutError:
                return ApiError(408, "body", "the body did not arrive in time").response()
            except ClientDisconnect:
                return Response(status_code=499)  # nobody is left to read it
        return wrapped

    async def page_file(request: Request) -> Response:
        body, media = page[request.url.path]
        return Response(body, media_type=media, headers={"Content-Security-Policy": PAGE_POLICY,
                                                         "Cache-Control": "no-cache"})

    async def healthz(request: Request) -> Response:
        return JSON({"status": "ok", "models": len(models),
                             "streams": sum(m.batcher.reserved for m in models),
                             "max_streams": limits.max_streams})

    async def list_models(request: Request) -> Response:
        return JSON({"models": [m.info for m in models]})

    async def generate(request: Request) -> Response:
        body = await read_json(request, limits, GenerateBody)
        served = pick(body.model)
        config = sample_config(body, served, limits)
        loop = asyncio.get_running_loop()
        woken, over = asyncio.Event(), asyncio.Event()  # new text or the end; the end

        def on_wake() -> None:
            woken.set()
            if job.ended:
                over.set()

        def wake() -> None:  # called from the batch thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to wake
                loop.call_soon_threadsafe(on_wake)

        job = Job(config, time.monotonic() + limits.request_timeout, wake)
        try:
            served.batcher.reserve(job)
        except Busy as exc:
            raise ApiError(503, "num_samples", f"the service is at capacity ({exc}); try again "
                           f"shortly", headers={"Retry-After": "1"}) from None
        try:
            await anyio.to_thread.run_sync(served.batcher.start, job, limiter=workers)
        except BaseException:
            job.cancel()
            raise
        streamed = body.stream or "text/event-stream" in request.headers.get("accept", "")
        if streamed:
            return JobStream(job, _events(job, woken, over, served.name))
        try:
            if not await _finished_or_gone(job, woken, request):
                return Response(status_code=499)
        finally:
            job.cancel()  # a no-op once it ended
        if job.ended != "done":
            raise ended_error(job.ended)
        return JSON({"model": served.name, "seed": job.seed, "prime": job.prime,
                     "samples": [job.text(r) for r in range(job.rows)]})

    async def _events(job: Job, woken: asyncio.Event, over: asyncio.Event, name: str):
        """start, then text chunks as they are drawn, then done (or error)."""
        yield _sse("start", {"model": name, "seed": job.seed, "prime": job.prime, "num_samples": job.rows})
        while True:
            await woken.wait()
            woken.clear()
            ended = job.ended  # before reading: everything drawn before it ended is read
            for row, text in enumerate(job.read()):
                if text:
                    yield _sse("text", {"sample": row, "text": text})
            if ended == "done":
                yield _sse("done", {"chars": job.produced})
                return
            if ended:
                error = ended_error(ended)
                yield _sse("error", {"error": {"field": error.field, "message": error.message}})
                return
            with contextlib.suppress(asyncio.TimeoutError):  # let a few characters gather
                await asyncio.wait_for(over.wait(), STREAM_FLUSH_S)  # (unless that was all)

    async def score(request: Request) -> Response:
        body = await read_json(request, limits, ScoreBody)
        served = pick(body.model)
        if len(body.text) > limits.max_text:
            raise ApiError(422, "text", f"text has {len(body.text):,} characters; this service "
                           f"scores at most {limits.max_text:,} (--max-text)")
        analysis = await anyio.to_thread.run_sync(analyse, served.model.module, served.vocab,
                                                  body.text, limiter=workers)
        answer = {"model": served.name, **score_summary(analysis)}
        if body.dynamic:  # a figure of its own beside the static one, never mixed into it
            dynamic = DynamicConfig()
            with anyio.fail_after(limits.request_timeout):
                result = await anyio.to_thread.run_sync(
                    functools.partial(served.model.evaluate, body.text, dynamic=dynamic),
                    limiter=workers)
            answer["dynamic"] = {"chars": result.chars, "bits_per_char": result.bits_per_char,
                                 "nats_per_char": result.nats_per_char,
                                 "perplexity": result.perplexity, "accuracy": result.accuracy,
                                 "lr": dynamic.lr, "decay": dynamic.decay, "window": dynamic.window}
        return JSON(answer)

    routes = [Route(path, page_file) for path in page]
    routes += [Route("/healthz", healthz),
               Route("/v1/models", endpoint(list_models)),
               Route("/v1/generate", endpoint(generate), methods=["POST"]),
               Route("/v1/score", endpoint(score), methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for m in models:
            await anyio.to_thread.run_sync(m.batcher.close)

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: _not_found, 405: _not_allowed})
    return app


class JobStream(StreamingResponse):
    """A job's server-sent events. However the response ends (done, or the client gone, which
    Starlette answers by cancelling it, even before the first event), the job is cancelled, so
    its rows leave the batch at the next step."""

    def __init__(self, job: Job, events):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # a no-op once it ended


async def _not_found(request: Request, exc) -> Response:
    return ApiError(404, None, f"no such path {request.url.path}; see GET /v1/models, POST "
                    f"/v1/generate, POST /v1/score").response()


async def _not_allowed(request: Request, exc) -> Response:
    return ApiError(405, None, f"{request.method} is not allowed on {request.url.path}").response()


async def _finished_or_gone(job: Job, woken: asyncio.Event, request: Request) -> bool:
    """Wait for the job to end (True) or the client to hang up (False)."""
    async def finished() -> None:
        while job.ended is None:
            await woken.wait()
            woken.clear()

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


def sample_config(body: GenerateBody, served: Served, limits: Limits) -> SampleConfig:
    """The request's SampleConfig, or an ApiError naming the field at fault."""
    if body.length > limits.max_length:
        raise ApiError(422, "length", f"length must be at most {limits.max_length:,} (the service's "
                       f"--max-length), got {body.length:,}")
    if len(body.prime) > limits.max_text:
        raise ApiError(422, "prime", f"prime has {len(body.prime):,} characters; this service takes "
                       f"at most {limits.max_text:,} (--max-text)")
    if body.num_samples > limits.max_streams:
        raise ApiError(422, "num_samples", f"num_samples must be at most {limits.max_streams} (the "
                       f"service's --max-streams), got {body.num_samples}")
    if body.seed is not None and not SEED_RANGE[0] <= body.seed <= SEED_RANGE[1]:
        raise ApiError(422, "seed", f"seed must be between -2**63 and 2**64 - 1, got {body.seed}")
    try:
        config = SampleConfig(length=body.length, temperature=body.temperature, top_k=body.top_k,
                              top_p=body.top_p, greedy=body.greedy, num_samples=body.num_samples,
                              seed=body.seed, prime=body.prime, unknown=body.unknown)
    except UserError as exc:
        raise _config_error(exc) from None
    try:
        check_prime(served.vocab, body.prime, body.unknown)
    except UserError as exc:
        raise _config_error(exc, "prime") from None
    return config


def score_summary(analysis: Analysis) -> dict[str, Any]:
    """What /v1/score answers: eval's figures over the scored characters, and each character:
    whether the model knows it, its bits (null where not scored: the first, and any outside the
    vocabulary) and the model's top guesses for it."""
    scored = analysis.scored
    n = int(scored.sum())
    if n == 0:
        raise ApiError(422, "text", "nothing to score: the text needs two characters in the "
                       "model's vocabulary (the first is only read)")
    bits = float(analysis.bits[scored].mean())
    right = sum(1 for t in scored.nonzero()[0] if analysis.top[t] and analysis.top[t][0][0] == analysis.text[t])
    unknown = [c for c, known in zip(analysis.text, analysis.known) if not known]
    characters = [{"char": c, "known": bool(known), "bits": round(b, 4) if math.isfinite(b) else None,
                   "top": [[s, round(p, 4)] for s, p in top]}
                  for c, known, b, top in zip(analysis.text, analysis.known, analysis.bits.tolist(), analysis.top)]
    return {"chars": n, "bits_per_char": bits, "nats_per_char": bits * LN2,
            "perplexity": 2.0 ** bits, "accuracy": right / n, "unknown_chars": len(unknown),
            "unknown_symbols": list(dict.fromkeys(unknown)), "characters": characters}


# ---- binding and running -----------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_exposure(host: str, api_key: str | None, allow_public: bool) -> None:
    """Refuse to open the service to the network with no key, unless told to."""
    if api_key is None and not allow_public and not is_loopback(host):
        raise UserError(f"--host {host} would open the service to the network with no API key; "
                        f"pass --api-key KEY (or set {API_KEY_ENV}), or --allow-public to serve "
                        f"it open, or bind to 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a one-line UserError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UserError(f"cannot bind to --host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                        + (" (another service has it; pick another --port)"
                           if exc.errno == 98 else "")) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def make_server(app: Starlette, access_log: bool = True, keep_alive_s: int = 5) -> uvicorn.Server:
    """A uvicorn server for `app` on its h11 protocol (HeadTimeoutH11); run it with
    .run(sockets=[sock]), stop it with SIGINT/SIGTERM (or .should_exit = True)."""
    logging_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logging_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is for data
    logging_config["loggers"]["nextchar"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config = uvicorn.Config(app, http=HeadTimeoutH11, access_log=access_log, log_config=logging_config,
                            timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=5,
                            lifespan="on")
    return uvicorn.Server(config)


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, with a clock on every request head: a connection that has not sent
    a whole one within the keep-alive timeout of opening (or of its last response) is closed.
    uvicorn's own keep-alive clock starts only after a first response and stops at the first
    byte, so a client that connects and sends nothing, or half a request line, would hold its
    connection for ever."""

    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start_head_clock()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.head_timer is not None:
            self.head_timer.cancel()  # a whole head arrived; the app's timeouts take over
            self.head_timer = None

    def connection_lost(self, exc) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def _start_head_clock(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_late)

    def _head_late(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def serve(runs: list[str], *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          allow_public: bool = False, limits: Limits | None = None, precision: str = "auto",
          checkpoint: str = "best", device: str = "cpu", access_log: bool = True) -> None:
    """`nextchar serve`: check, bind, load, serve until stopped."""
    def say(line: str) -> None:
        print(f"nextchar serve: {line}", file=sys.stderr, flush=True)

    limits = limits or Limits()
    if api_key is not None and not api_key.strip():
        raise UserError(f"the API key is empty; give a real one, or none (unset {API_KEY_ENV})")
    _named_runs(runs)  # a bad name is refused before anything is bound
    check_exposure(host, api_key, allow_public)
    sock = bind(host, port)  # before loading: a port in use is refused at once
    models = load_models(runs, limits, precision, checkpoint, device, say)
    say(f"at {url_of(sock)} ({'API key required' if api_key else 'no API key'}); Ctrl-C stops it")
    make_server(create_app(models, limits, api_key), access_log).run(sockets=[sock])
