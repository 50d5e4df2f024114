"""How `serve` runs uvicorn: request heads bounded, slow clients cut off, signals stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bridge.clock import SystemClock
from bridge.errors import ConfigError
from bridge.rejections import RejectionLog
from bridge.sections import ServerSettings

log = logging.getLogger("bridge.server")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACEFUL_SHUTDOWN_SECONDS = 5
FROM_PROXY = "bridge.from_proxy"  # in the scope: the peer is one of forwarded_allow_ips


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the two limits it lacks.

    httptools keeps a header until its end arrives, however long, and a chunked body's
    trailers too: sixteen clients sending 64 MiB headers grew the process by a gigabyte. Here
    a request head larger than `max_head_bytes` gets 431 and the connection is closed, and so
    does a request whose head, chunk-size lines and trailers (everything but the body itself)
    come to more than twice that; no more is ever fed to the parser. And a request must arrive
    whole, head and body, within `request_timeout` of its first byte (or of the connection,
    for the first one): a client that dribbles gets 408 and is disconnected. A byte after an
    answer is such a first byte, even a bare CRLF that begins no request. Waiting for the
    bridge's own answer is not counted.
    """

    max_head_bytes: ClassVar[int] = 16_384
    request_timeout: ClassVar[float] = 10.0
    refusals: ClassVar[RejectionLog] = RejectionLog(log, SystemClock())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._unparsed_bytes = 0  # of this request, fed to the parser and not body
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.timeout_keep_alive_task is not None:
            self._arm()  # idle after an answer: these are the next request's first bytes
        # Feed the parser at most one byte past what a request may hold besides its body.
        while data and not self._stopped():
            room = self._unparsed_limit() + 1 - self._unparsed_bytes
            piece, data = data[:room], data[room:]
            self._unparsed_bytes += len(piece)
            self._feed(piece)
            if self._unparsed_bytes > self._unparsed_limit() and not self._stopped():
                self._refuse(431, "header_too_large", self._too_large())

    def _unparsed_limit(self) -> int:
        """The head alone, then the head with the chunk sizes and trailers of its body."""
        return self.max_head_bytes if self._in_head else 2 * self.max_head_bytes

    def _too_large(self) -> str:
        if self._in_head:
            return f"request head over {self.max_head_bytes} bytes"
        return f"request head and trailers over {2 * self.max_head_bytes} bytes"

    def _feed(self, data: bytes) -> None:
        """uvicorn's own data_received, but a malformed request is refused like any other,
        its log line thinned, rather than logged once per request."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._refuse(400, "bad_request", "not a valid HTTP request")
        except httptools.HttpParserUpgrade:
            pass  # the bridge speaks nothing else: the request is answered as plain HTTP

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._unparsed_bytes -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head, self._unparsed_bytes = True, 0

    def _stopped(self) -> bool:
        return self._refused or self.transport.is_closing()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self._refuse(408, "too_slow",
                     f"request not received in full within {self.request_timeout:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._refused = True
        self._disarm()
        self.refusals.rejected("connection", status, reason, message)
        cycle = self.cycle
        if cycle is None or not cycle.response_started or cycle.response_complete:
            # Only between answers: one on its way out (pipelining) must not be interleaved.
            phrase = http.HTTPStatus(status).phrase
            body = f"{phrase}\n".encode()
            self.transport.write(
                f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        self.transport.close()


def bounded_protocol(server: ServerSettings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with this server's limits."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {
        "max_head_bytes": server.max_header_bytes,
        "request_timeout": server.request_timeout.total_seconds(),
    })


class BridgeServer(uvicorn.Server):
    """uvicorn's server, but a stop asked for by SIGTERM or SIGINT ends the process with 0.

    uvicorn raises the signal again once it has shut down, so the process dies of it (status
    143) before the log writer has written its last lines.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class ProxiedPeer:
    """Uvicorn's forwarded headers (trusted from forwarded_allow_ips only), noting in the scope
    whether the connecting peer was such a proxy: the console believes a user header only then.
    """

    def __init__(self, app: Any, trusted: list[str]) -> None:
        self.inner = ProxyHeadersMiddleware(app, trusted)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = scope.get("client")
        scope[FROM_PROXY] = bool(client) and client[0] in self.inner.trusted_hosts
        await self.inner(scope, receive, send)


def server_config(app: Any, server: ServerSettings) -> uvicorn.Config:
    """How `serve` runs uvicorn: forwarded headers are trusted from forwarded_allow_ips only."""
    return uvicorn.Config(
        ProxiedPeer(app, server.forwarded_allow_ips), host=server.host, port=server.port,
        log_config=None, access_log=False, proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, server_header=False,
        http=bounded_protocol(server), ws="none",
    )


def listening_socket(server: ServerSettings) -> socket.socket:
    """The socket `serve` listens on, bound before anything starts, so a taken port stops it."""
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    listening = socket.socket(family)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((server.host, server.port))
    except OSError as exc:
        listening.close()
        raise ConfigError(_cannot_listen(server, exc)) from None
    return listening


def _cannot_listen(server: ServerSettings, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {server.port} on {server.host or '*'} is in use by another program: "
                "stop it, or set [server] port (or BRIDGE_SERVER__PORT) to a free port")
    return (f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}; check "
            "[server] host and port (or BRIDGE_SERVER__HOST, BRIDGE_SERVER__PORT)")
