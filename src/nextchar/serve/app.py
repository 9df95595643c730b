"""The ASGI app: the routes, each a method of Service, over the models it serves (models.py);
a generate request's job is streamed or awaited by streams.py."""

from __future__ import annotations

import contextlib
import functools
import hmac
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..batching import Busy
from ..config import DynamicConfig
from ..config import ServeLimits as Limits
from ..report.analysis import analyse
from .bodies import JSON, ApiError, GenerateBody, ScoreBody, read_json, sample_config, score_summary
from .models import Served
from .streams import JobStream, ended_error, events, finished_or_gone, start_job

WORKERS = 2  # requests started (seeds, first noise) and texts scored at once, beside the batches


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
        timeout = self.limits.request_timeout
        job, wakeups = start_job(sample_config(body, served.vocab, self.limits), timeout)
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
            return JobStream(job, events(job, wakeups, served.name, timeout))
        try:
            if not await finished_or_gone(job, wakeups, request):
                return Response(status_code=499)
        finally:
            job.cancel()  # a no-op once it ended
        if job.ended != "done":
            raise ended_error(job.ended, timeout)
        return JSON(
            {
                "model": served.name,
                "seed": job.seed,
                "prime": job.prime,
                "samples": [job.text(r) for r in range(job.rows)],
            }
        )

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


async def _not_found(request: Request, exc) -> Response:
    return ApiError(
        404,
        None,
        f"no such path {request.url.path}; see GET /v1/models, POST /v1/generate, POST /v1/score",
    ).response()


async def _not_allowed(request: Request, exc) -> Response:
    return ApiError(405, None, f"{request.method} is not allowed on {request.url.path}").response()
