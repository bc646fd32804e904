"""The gateway's HTTP server: uvicorn with the limits a port open to strangers needs.

Key rule: no client can hold the server or make it buffer without bound. A request's line
and headers must fit ``max_header_bytes`` (else 431) and arrive within
``request_timeout_s`` of its first byte, or of the connection opening (else 408); beyond
``max_connections`` open connections or requests in flight a request gets 503. On SIGTERM
the requests already inside finish (up to ``shutdown_timeout_s``), a request that arrives
meanwhile, on a kept-alive connection too, gets 503 with ``Connection: close``, then the
process exits. Every answer the server gives by itself is in the one JSON error shape.

uvicorn has no header timeout or header size limit with its default (httptools) parser,
so :class:`GatewayProtocol` adds them to it; the body's own deadline lives in the ASGI
guard (``api/middleware.py``), which sees the body arrive.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fnbundle.errors import error_body
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.api")

# Once draining, a connection with no request inside stays open while other requests are
# still inside, and at least this long (seconds), so a request already on its way (or sent
# on a kept-alive connection meanwhile) reads a 503 instead of a reset.
DRAIN_GRACE_S = 1.0
RETRY_AFTER_S = 2  # seconds a refused client is asked to wait before trying again
# After refusing a request the server stops writing but reads (and drops) what the client
# still sends for this long (seconds) before closing: closing a socket with unread data
# sends a reset, which can destroy the answer before the client reads it.
LINGER_S = 2.0


def raw_error(status: int, type_: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 error answer in the JSON error shape, closing the connection."""
    body = json.dumps(error_body(type_, message)).encode()
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        lines.append(f"retry-after: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def unavailable_app(message: str) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app answering every request 503 with ``Retry-After`` and ``Connection: close``."""
    body = json.dumps(error_body("unavailable", message)).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


BUSY = unavailable_app("The gateway is at its connection limit; retry shortly.")
DRAINING = unavailable_app("The gateway is shutting down; retry on another instance.")


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request already answered."""


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a header deadline, a header size limit, a
    connection limit and a draining mode. :func:`protocol_for` fills in the limits."""

    max_header_bytes = 16 * 1024  # bytes
    head_timeout_s = 15.0  # seconds
    max_connections = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app = self.app
        self._draining = False
        self._in_head = True  # waiting for, or reading, a request line and headers
        self._head_bytes = 0  # bytes received of the head being read
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered with an error: only draining what the client sends

    # --- the head deadline and size -----------------------------------------------------
    def _arm_head_timer(self, delay_s: float) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(delay_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._done() or not self._in_head:
            return
        if self._draining:
            if self._head_bytes:
                self._refuse(503, "unavailable", "The gateway is shutting down.", RETRY_AFTER_S)
            elif self.tasks:  # requests still inside: keep answering 503 until they are done
                self._arm_head_timer(DRAIN_GRACE_S)
            else:
                self.transport.close()  # an idle connection: nothing to answer
            return
        self._refuse(
            408,
            "request_timeout",
            f"The request headers did not arrive within {self.head_timeout_s:g} s.",
        )

    def _refuse(
        self, status: int, type_: str, message: str, retry_after: int | None = None
    ) -> None:
        log.warning("refused a request from %s: %s", self.client, message)
        self._refused = True
        self._cancel_head_timer()
        self.transport.write(raw_error(status, type_, message, retry_after))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then end of stream; keep reading
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _done(self) -> bool:
        """Already refused, or closing: nothing more to parse or answer."""
        return self._refused or self.transport.is_closing()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer(self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after an error answer: drop it
        super().data_received(data)
        if self._in_head and not self._done():
            # The parser keeps a partial header in memory until it ends: count what came.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._too_large()

    def _too_large(self) -> None:
        self._refuse(
            431,
            "headers_too_large",
            f"Request line and headers are over the limit of {self.max_header_bytes} bytes.",
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:  # a later request on the connection: its own deadline
            self._arm_head_timer(self.head_timeout_s)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)  # ": ", CRLF
        if size > self.max_header_bytes:
            self._too_large()
            raise _Refused
        over = (
            len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections
        )
        if self._draining:
            self.app = DRAINING
        elif over:
            log.warning("over the connection limit of %d: answering 503", self.max_connections)
            self.app = BUSY
        else:
            self.app = self._app
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._done():
            self._in_head = True  # waiting for the next request (keep-alive covers idling)
            self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._done():  # already answered (431) before the parser gave up
            return
        self._refuse(400, "invalid_request", msg)

    # --- draining -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Called by uvicorn on SIGTERM: a request inside finishes, and its connection
        closes after the answer; a connection without one stays open while requests are
        still inside (at least :data:`DRAIN_GRACE_S`), answering 503 to what arrives."""
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self._unset_keepalive_if_required()
            self._arm_head_timer(DRAIN_GRACE_S)
        else:
            self.cycle.keep_alive = False


def protocol_for(settings: Settings) -> type[GatewayProtocol]:
    """The protocol class uvicorn instantiates per connection, with these settings' limits."""
    return type(
        "ConfiguredGatewayProtocol",
        (GatewayProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "head_timeout_s": settings.request_timeout_s,
            "max_connections": settings.max_connections,
        },
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, calling ``on_started`` once it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None = None):
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()


def build_server(
    app: Any, settings: Settings, on_started: Callable[[], None] | None = None
) -> GatewayServer:
    """The gateway's server for ``app``, listening where ``settings`` say."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        # Its lines go through the root logger in FNB_LOG_FORMAT (fnbundle.logs); the access
        # line is the gateway's own, with the request id (api/observability.py).
        log_config=None,
        access_log=False,
        http=protocol_for(settings),
        ws="none",  # no route speaks WebSocket: an upgrade is just a request
        # uvicorn takes whole seconds; requests still inside after it are cancelled (503).
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
    )
    return GatewayServer(config, on_started)
