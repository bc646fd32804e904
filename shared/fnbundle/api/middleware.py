"""Guards that run before any route: API-key check, body-size limit, body deadline (pure ASGI).

Key rules: the key is checked before one byte of the body is read, in constant time,
against every configured key, and a request with more than one ``Authorization`` header
is refused; a body is refused with 413 from its Content-Length before it is buffered, and
a body without one is counted as it streams and cut off at the limit; a body that has not
fully arrived ``request_timeout_s`` after the headers is answered 408 and its connection
closed. A request cancelled at the end of a graceful shutdown answers 503, not 500.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnbundle.errors import error_body
from fnbundle.settings import MIB

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fnbundle.settings import Settings

PROTECTED_PREFIX = "/v1"


async def _send_error(
    scope: Scope, send: Send, status: int, type_: str, message: str, extra: list | None = None
) -> None:
    """The error in the body style of the route asked for (OpenAI's on OpenAI routes)."""
    from fnbundle.api.errors import openai_error_body, render_error

    payload = error_body(type_, message)
    app = scope.get("app")  # Starlette sets it before the middleware runs
    if scope["path"] in getattr(getattr(app, "state", None), "openai_paths", ()):
        payload = openai_error_body(status, payload)
    body = render_error(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


def bearer_key_ok(headers: Iterable[tuple[bytes, bytes]], keys: list[bytes]) -> bool:
    """Exactly one ``Authorization: Bearer <key>`` header holding one of ``keys``. Two
    headers are refused: proxies and frameworks disagree on which one counts."""
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if len(values) != 1:
        return False
    scheme, _, token = values[0].partition(b" ")
    ok = False
    for key in keys:  # compare against every key: timing reveals nothing
        ok |= hmac.compare_digest(token.strip(), key)
    return ok and scheme.lower() == b"bearer"


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: list[str],
        max_body_bytes: int,
        body_timeout_s: float,
        uploads: dict[str, int] | None = None,
        upload_timeout_s: float = 600.0,
    ):
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.max_body = max_body_bytes
        self.body_timeout_s = body_timeout_s
        # POST paths that take files: their own limit, and a deadline for the whole body
        # (each part must still arrive within body_timeout_s of the one before).
        self.uploads = uploads or {}
        self.upload_timeout_s = upload_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        protected = scope["path"].startswith(PROTECTED_PREFIX)
        if (
            protected
            and self.keys
            and scope["method"] != "OPTIONS"
            and not bearer_key_ok(headers, self.keys)
        ):
            await _send_error(
                scope,
                send,
                401,
                "unauthorized",
                "Missing or invalid API key: send one 'Authorization: Bearer <key>' header.",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        upload = scope["method"] == "POST" and scope["path"] in self.uploads
        max_body = self.uploads[scope["path"]] if upload else self.max_body
        length = dict(headers).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > max_body
            except ValueError:
                await _send_error(
                    scope, send, 400, "invalid_request", "Invalid Content-Length header."
                )
                return
            if too_big:
                await _send_error(
                    scope,
                    send,
                    413,
                    "payload_too_large",
                    f"Request body of {int(length)} bytes is over the limit of {max_body} bytes.",
                )
                return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._guarded_receive(receive, max_body, upload), tracked_send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when the graceful shutdown ends; the
            # client should retry elsewhere, not read a server error.
            if not started:
                await _send_error(
                    scope,
                    send,
                    503,
                    "unavailable",
                    "The gateway shut down before this request finished; retry it.",
                    [(b"retry-after", b"2"), (b"connection", b"close")],
                )
            raise

    def _guarded_receive(self, receive: Receive, max_body: int, upload: bool) -> Receive:
        """``receive`` with the body counted against the limit and a deadline on its arrival
        (an upload's: the whole body within upload_timeout_s, each part within
        body_timeout_s of the last); once the body is complete (or the client gone), later
        calls pass straight through (an event stream waits on ``receive`` for the
        disconnect)."""
        loop = asyncio.get_running_loop()
        total_s = self.upload_timeout_s if upload else self.body_timeout_s
        final = loop.time() + total_s
        received = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            idle = loop.time() + self.body_timeout_s if upload else final
            try:
                async with asyncio.timeout_at(min(final, idle)):
                    message = await receive()
            except TimeoutError:
                waited = total_s if loop.time() >= final else self.body_timeout_s
                raise HTTPException(
                    408,
                    f"The request body did not arrive within {waited:g} s.",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise HTTPException(413, f"Request body is over the limit of {max_body} bytes.")
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return guarded_receive


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """The guards (API keys, body limit) and, with ``cors_origins``, CORS: what every
    fnbundle app puts in front of its routes."""
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(
        GuardMiddleware,
        api_keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.request_timeout_s,
        uploads={"/v1/datasets": int(settings.dataset_max_mib * MIB)},
        upload_timeout_s=settings.dataset_upload_timeout_s,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Server-Timing"],  # a page may read them
            max_age=600,  # seconds a browser may cache the preflight answer
        )
