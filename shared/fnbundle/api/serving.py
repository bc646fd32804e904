"""The POST routes of every serving task in the registry (``/v1/classify``,
``/v1/embeddings``, ``/v1/chat/completions``, ...).

Key rule: a route is generated, not written: the task declares its routes (path, request
and response models, summary), its error style, and whether a client that leaves cancels
its request; the route parses, hands the request to the model host (limits, load, batch,
run) and returns. An answer that is an async iterator of chunks (a streamed generation) is
sent as server-sent events, ``data: <json>`` each and ``data: [DONE]`` last; a client that
disconnects closes the iterator at once, which is how an engine frees its slot. An error
after the stream started is sent as one more event in the route's error style before
``[DONE]``. No route module names a task.
"""

# No ``from __future__ import annotations``: FastAPI reads the generated endpoint's
# annotations, which are the task's own request and response classes.

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fnbundle.api.errors import openai_error_body
from fnbundle.api.observability import note_answer
from fnbundle.errors import FnbError, internal_error_body
from fnbundle.tasks.base import Route, ServingTask

log = logging.getLogger("fnbundle.api")

# How a streamed answer is documented beside the JSON one.
STREAMED: dict[str, Any] = {
    "content": {
        "text/event-stream": {
            "schema": {"type": "string"},
            "example": 'data: {"object": "chat.completion.chunk", ...}\n\ndata: [DONE]\n\n',
        }
    },
    "description": "The response; with stream true, its chunks as server-sent events.",
}
CLIENT_CLOSED = 499  # nobody reads it: the client is gone (nginx's code for this case)


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


def _endpoint(task: ServingTask[Any, Any, Any], route: Route) -> Any:
    request_model = route.request_model
    openai_errors = task.error_style == "openai"

    async def endpoint(body: request_model, request: Request) -> Any:  # type: ignore[valid-type]
        host = request.app.state.host
        if route.cancel_on_disconnect:
            answer = await until_disconnect(host.serve(task, body), request.receive)
            if answer is None:
                return Response(status_code=CLIENT_CLOSED)
        else:
            answer = await host.serve(task, body)
        if isinstance(answer, AsyncIterator):
            return EventStream(answer, openai_errors=openai_errors)
        note_answer(answer)  # a generation's tokens, for GET /metrics
        return answer

    last = route.path.rstrip("/").rsplit("/", 1)[-1]
    endpoint.__name__ = task.slug if route.path == task.route else f"{task.slug}_{last}"
    endpoint.__doc__ = route.summary
    return endpoint


def task_router(task: ServingTask[Any, Any, Any]) -> APIRouter:
    """The POST routes of ``task``, documented with their models and summaries."""
    router = APIRouter(tags=[task.slug])
    for route in task.routes():
        router.add_api_route(
            route.path,
            _endpoint(task, route),
            methods=["POST"],
            response_model=route.response_model,
            summary=route.summary,
            responses={200: STREAMED} if route.streams else None,
        )
    return router


def openai_paths(tasks: list[ServingTask[Any, Any, Any]]) -> set[str]:
    """The routes whose errors are in OpenAI's shape."""
    return {r.path for t in tasks if t.error_style == "openai" for r in t.routes()}
