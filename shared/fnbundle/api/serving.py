"""The POST routes of every serving task in the registry (``/v1/classify``,
``/v1/embeddings``, ``/v1/chat/completions``, ...).

Key rule: a route is generated, not written: the task declares its routes (path, request
and response models, summary), its error style, and whether a client that leaves cancels
its request; the route parses, hands the request to the model host (limits, load, batch,
run) and returns; an answer that is an async iterator of chunks is sent as server-sent
events (``api/streaming.py``). No route module names a task. A well-formed JSON body takes
a short path (:class:`TaskRoute`: validated from its bytes, no dependency solving); every
other body is answered by FastAPI's own handler, so both answer alike.
"""

# No ``from __future__ import annotations``: FastAPI reads the generated endpoint's
# annotations, which are the task's own request and response classes.

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute, serialize_response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from fnbundle.api.observability import note_answer
from fnbundle.api.streaming import EventStream, until_disconnect
from fnbundle.tasks.base import Route, ServingTask

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


def _answer(task: ServingTask[Any, Any, Any], route: Route) -> Any:
    """What a route does with a parsed body: the host's answer, a stream of it, or 499."""
    openai_errors = task.error_style == "openai"

    async def answer_to(body: Any, request: Request) -> Any:
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

    return answer_to


def _endpoint(task: ServingTask[Any, Any, Any], route: Route) -> Any:
    request_model = route.request_model
    answer_to = _answer(task, route)

    async def endpoint(body: request_model, request: Request) -> Any:  # type: ignore[valid-type]
        return await answer_to(body, request)

    last = route.path.rstrip("/").rsplit("/", 1)[-1]
    endpoint.__name__ = task.slug if route.path == task.route else f"{task.slug}_{last}"
    endpoint.__doc__ = route.summary
    endpoint.answer_to = answer_to  # type: ignore[attr-defined]
    return endpoint


def json_content_type(value: str | None) -> bool:
    """``application/json`` or ``application/<x>+json``, parameters ignored: the bodies
    FastAPI itself would parse as JSON."""
    if not value:
        return False
    kind = value.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


class TaskRoute(APIRoute):
    """A task's POST route with a short path for a well-formed JSON body: the body
    validated from its bytes by the request model (no dict in between, no dependency
    solving), the answer serialized to JSON by its response model, as FastAPI does.

    Key rule: the short path only ever answers a request it validated; any other body (no
    JSON content type, empty, malformed, failing validation) goes to FastAPI's own
    handler, which reads the same cached body and answers exactly as it always has (the
    same statuses and error bodies). Under load the main thread's Python per request
    bounds the gateway's throughput (docs/BENCHMARKS.md, "Where the gateway's time goes
    under load")."""

    def get_route_handler(self) -> Any:
        standard = super().get_route_handler()
        answer_to = getattr(self.endpoint, "answer_to", None)
        body_model = self.body_field.field_info.annotation if self.body_field else None
        if answer_to is None or not (
            isinstance(body_model, type) and issubclass(body_model, BaseModel)
        ):
            return standard
        response_field = self.response_field

        async def handler(request: Request) -> Response:
            if not json_content_type(request.headers.get("content-type")):
                return await standard(request)
            try:
                raw = await request.body()  # cached on the request: the fallback reads it again
            except HTTPException:  # the guards' 408 and 413
                raise
            except Exception:  # the client left mid-body: FastAPI's own answer to that
                return await standard(request)
            try:
                body = body_model.model_validate_json(raw) if raw else None
            except ValidationError:
                body = None
            if body is None:
                return await standard(request)
            answer = await answer_to(body, request)
            if isinstance(answer, Response):
                return answer
            content = await serialize_response(
                field=response_field, response_content=answer, dump_json=True
            )
            return Response(content=content, media_type="application/json")

        return handler


def task_router(
    task: ServingTask[Any, Any, Any], route_class: type[APIRoute] = TaskRoute
) -> APIRouter:
    """The POST routes of ``task``, documented with their models and summaries
    (``route_class``: FastAPI's own ``APIRoute`` answers alike, every body through its
    generic handler)."""
    router = APIRouter(tags=[task.slug], route_class=route_class)
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
