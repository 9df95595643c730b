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

    bodies.py    what a request may send, and the errors it is answered with
    models.py    the runs served: named, loaded, their weight format settled, their batches
    streams.py   a running job seen from the event loop: wake-ups, server-sent events, its end
    app.py       the routes, over the models served
    binding.py   the address, its exposure check, the socket and uvicorn
    serve()      (here) check, bind, load, run
"""

from __future__ import annotations

import sys

from ..config import API_KEY_ENV
from ..config import ServeLimits as Limits
from ..errors import UserError
from .app import create_app
from .binding import bind, check_exposure, make_server, url_of
from .models import load_models, named_runs

__all__ = ["bind", "check_exposure", "create_app", "load_models", "make_server", "serve"]


def serve(
    runs: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    allow_public: bool = False,
    limits: Limits | None = None,
    precision: str = "auto",
    checkpoint: str = "best",
    device: str = "cpu",
    access_log: bool = True,
) -> None:
    """`nextchar serve`: check, bind, load, serve until stopped."""

    def say(line: str) -> None:
        print(f"nextchar serve: {line}", file=sys.stderr, flush=True)

    limits = limits or Limits()
    if api_key is not None and not api_key.strip():
        raise UserError(f"the API key is empty; give a real one, or none (unset {API_KEY_ENV})")
    named_runs(runs)  # a bad name is refused before anything is bound
    check_exposure(host, api_key, allow_public)
    sock = bind(host, port)  # before loading: a port in use is refused at once
    models = load_models(runs, limits, precision, checkpoint, device, say)
    say(f"at {url_of(sock)} ({'API key required' if api_key else 'no API key'}); Ctrl-C stops it")
    make_server(create_app(models, limits, api_key), access_log).run(sockets=[sock])
