"""Streamed answers: server-sent events, and a request's work cut short when its client leaves.

Key rule: an answer that is an async iterator of chunks (a streamed generation) is sent as
``data: <json>`` events and ``data: [DONE]`` last; a client that disconnects closes the
iterator at once, which is how an engine frees its slot. An error after the stream started
is sent as one more event in the route's error style before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from fnbundle.api.errors import openai_error_body
from fnbundle.errors import FnbError, internal_error_body

log = logging.getLogger("fnbundle.api")


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (the body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(work: Coroutine[Any, Any, Any], receive: Receive) -> Any:
    """``work``'s result, or None once the client has gone (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself is cancelled (a shutdown): so is the work
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _event(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


class EventStream(StreamingResponse):
    """Chunks as server-sent events; the iterator is closed when the client goes away."""

    def __init__(self, chunks: AsyncIterator[Any], *, openai_errors: bool):
        super().__init__(
            chunks,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.chunks = chunks
        self.openai_errors = openai_errors

    def _error(self, exc: Exception) -> bytes:
        if isinstance(exc, FnbError):
            status, body = exc.status, exc.to_body()
        else:
            log.error("a stream failed", exc_info=exc)
            status, body = 500, internal_error_body()
        return _event(openai_error_body(status, body) if self.openai_errors else body)

    async def _send_all(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
        except Exception as exc:
            await send({"type": "http.response.body", "body": self._error(exc), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with contextlib.suppress(OSError):  # the client went away between two chunks
                await until_disconnect(self._send_all(send), receive)
        finally:
            await self.chunks.aclose()  # type: ignore[attr-defined]
