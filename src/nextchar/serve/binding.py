"""Binding and running: which addresses may be served without a key, the listening socket,
and uvicorn with a clock on every request head."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import socket

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import API_KEY_ENV
from ..errors import UserError


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
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos
    )


def check_exposure(host: str, api_key: str | None, allow_public: bool) -> None:
    """Refuse to open the service to the network with no key, unless told to."""
    if api_key is None and not allow_public and not is_loopback(host):
        raise UserError(
            f"--host {host} would open the service to the network with no API key; "
            f"pass --api-key KEY (or set {API_KEY_ENV}), or --allow-public to serve "
            f"it open, or bind to 127.0.0.1"
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a one-line UserError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UserError(f"cannot bind to --host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            + (" (another service has it; pick another --port)" if exc.errno == 98 else "")
        ) from None
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
    logging_config["loggers"]["nextchar"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    config = uvicorn.Config(
        app,
        http=HeadTimeoutH11,
        access_log=access_log,
        log_config=logging_config,
        timeout_keep_alive=keep_alive_s,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
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
