"""Guards that run before any route: API-key check and body-size limit (pure ASGI).

Key rules: the key is checked before one byte of the body is read, in constant time,
against every configured key; a body is refused with 413 from its Content-Length before
it is buffered, and a body without one is counted as it streams and cut off at the limit.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnbundle.errors import error_body

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fnbundle.settings import Settings

PROTECTED_PREFIX = "/v1"


async def _send_error(
    send: Send, status: int, type_: str, message: str, extra: list | None = None
) -> None:
    body = json.dumps(error_body(type_, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, api_keys: list[str], max_body_bytes: int):
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.max_body = max_body_bytes

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        ok = False
        for key in self.keys:  # compare against every key: timing reveals nothing
            ok |= hmac.compare_digest(token.strip(), key)
        return ok and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protected = scope["path"].startswith(PROTECTED_PREFIX)
        if protected and self.keys and scope["method"] != "OPTIONS" and not self._authorized(scope):
            await _send_error(
                send,
                401,
                "unauthorized",
                "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                await _send_error(send, 400, "invalid_request", "Invalid Content-Length header.")
                return
            if too_big:
                await _send_error(
                    send,
                    413,
                    "payload_too_large",
                    f"Request body of {int(length)} bytes is over the limit of {self.max_body} bytes.",
                )
                return
            await self.app(scope, receive, send)
            return

        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(
                        413, f"Request body is over the limit of {self.max_body} bytes."
                    )
            return message

        await self.app(scope, counted_receive, send)


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """The guards (API keys, body limit) and, with ``cors_origins``, CORS: what every
    fnbundle app puts in front of its routes."""
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(
        GuardMiddleware, api_keys=settings.api_keys, max_body_bytes=settings.max_body_bytes
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,  # seconds a browser may cache the preflight answer
        )
