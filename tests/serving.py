"""Helpers for the tests of `nextchar serve`: a served app on a free port in a thread, the
problems it logs, and the events of a server-sent event stream."""

import contextlib
import json
import logging
import threading
import time

from nextchar.config import ServeLimits
from nextchar.serve import bind, create_app, load_models, make_server


class Problems(logging.Handler):
    """Warnings and errors that uvicorn or nextchar log while a server runs."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def errors(self) -> list[str]:
        return [self.format(r) for r in self.records if r.levelno >= logging.ERROR]


@contextlib.contextmanager
def running(runs, limits=None, api_key=None, keep_alive_s=5):
    """A served app on 127.0.0.1:<free port>: (base URL, the Served models, logged problems)."""
    limits = limits or ServeLimits()
    models = load_models([str(r) for r in runs], limits, precision="fp32")
    sock = bind("127.0.0.1", 0)
    server = make_server(
        create_app(models, limits, api_key), access_log=False, keep_alive_s=keep_alive_s
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    problems = Problems()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    for name in ("uvicorn", "uvicorn.error", "nextchar"):
        logging.getLogger(name).addHandler(problems)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", models, problems
    finally:
        for name in ("uvicorn", "uvicorn.error", "nextchar"):
            logging.getLogger(name).removeHandler(problems)
        server.should_exit = True
        thread.join(15)
        sock.close()


def events(lines) -> list[tuple[str, dict]]:
    """(event, data) of a server-sent event stream, from its lines."""
    found, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            found.append((name, json.loads(line[6:])))
    return found
