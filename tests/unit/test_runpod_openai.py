"""The RunPod OpenAI-route bridge's pieces: which request a job stands for, server-sent
events read back, and one in-process ASGI request that streams and can be abandoned.

The whole worker runs against the tiny Llama in tests/contract/test_generate_runpod.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI, Request
from fnbundle.errors import InvalidRequest, NotFound
from fnbundle.runpod_openai import Call, call_app, parse_job, sse_events
from sse_starlette import EventSourceResponse

pytestmark = pytest.mark.unit


def test_a_job_without_openai_route_is_the_task_routes_body():
    body = {"model": "tiny", "messages": []}
    assert parse_job(body, "/v1/chat/completions") == Call(
        "POST", "/v1/chat/completions", body, openai=False
    )


def test_runpods_openai_routes_become_requests_to_the_same_paths():
    chat = {"model": "tiny", "messages": [], "stream": True}
    call = parse_job({"openai_route": "/v1/chat/completions", "openai_input": chat}, "/x")
    assert call == Call("POST", "/v1/chat/completions", chat, openai=True) and call.stream
    models = parse_job({"openai_route": "/v1/models"}, "/x")
    assert models == Call("GET", "/v1/models", None, openai=True) and not models.stream
    # RunPod may send an (ignored) body with the models route.
    assert parse_job({"openai_route": "/v1/models", "openai_input": {}}, "/x").body is None


@pytest.mark.parametrize(
    ("job_input", "error", "match"),
    [
        ({"openai_route": "/v1/embeddings", "openai_input": {}}, NotFound, "served: /v1/chat"),
        ({"openai_route": "/v1/completions"}, InvalidRequest, "needs openai_input"),
        ({"openai_route": "/v1/completions", "openai_input": "hi"}, InvalidRequest, "object"),
        ("a string", InvalidRequest, "must be a JSON object"),
    ],
)
def test_a_job_that_is_no_request_is_refused_naming_the_field(job_input, error, match):
    with pytest.raises(error, match=match):
        parse_job(job_input, "/v1/chat/completions")


def test_server_sent_events_are_read_whole_across_chunks():
    events, rest = sse_events('data: {"a": 1}\n\ndata: {"b"')
    assert events == ['{"a": 1}'] and rest == 'data: {"b"'
    events, rest = sse_events(rest + ": 2}\r\n\r\n: ping\n\ndata: [DONE]\n\n")
    assert events == ['{"b": 2}', "[DONE]"] and rest == ""


def demo_app(closed: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"got": await request.json()}

    @app.get("/events")
    async def events() -> EventSourceResponse:
        async def stream() -> AsyncIterator[str]:
            for i in range(3):
                yield json.dumps({"i": i})
            yield "[DONE]"

        return EventSourceResponse(stream(), ping=None)

    @app.get("/forever")
    async def forever() -> EventSourceResponse:
        return EventSourceResponse(endless(closed), ping=None)

    return app


async def endless(closed: asyncio.Event) -> AsyncIterator[str]:
    """One event, then nothing until it is closed, as a long generation."""
    try:
        yield "first"
        await asyncio.sleep(3600)
    finally:
        closed.set()  # what an engine's generate() does: abort the sequence


def test_one_request_answers_json_and_streams_events():
    async def run() -> None:
        app = demo_app(asyncio.Event())
        answer = await call_app(app, "POST", "/echo", b'{"x": 1}')
        assert answer.status == 200 and answer.content_type == "application/json"
        assert json.loads(b"".join([c async for c in answer.chunks])) == {"got": {"x": 1}}

        answer = await call_app(app, "GET", "/events", None)
        assert answer.content_type.startswith("text/event-stream")
        text = "".join([c.decode() async for c in answer.chunks])
        assert sse_events(text)[0] == ['{"i": 0}', '{"i": 1}', '{"i": 2}', "[DONE]"]

        answer = await call_app(app, "GET", "/missing", None)
        assert answer.status == 404
        assert json.loads(b"".join([c async for c in answer.chunks])) == {"detail": "Not Found"}

    asyncio.run(run())


def test_closing_the_stream_early_stops_the_apps_generator():
    async def run() -> None:
        closed = asyncio.Event()
        answer = await call_app(demo_app(closed), "GET", "/forever", None)
        chunks = answer.chunks
        assert b"first" in await anext(chunks)
        await chunks.aclose()
        await asyncio.wait_for(closed.wait(), timeout=5)

    asyncio.run(run())


def test_a_cancelled_or_closed_job_stops_the_apps_stream():
    """RunPod cancels the handler's task when a client goes away or a job is cancelled: the
    route's stream is closed, as a disconnect would close it on the gateway."""
    from fnbundle.runpod_openai import OpenAIWorker

    async def run() -> None:
        closed = asyncio.Event()
        app = demo_app(closed)

        @app.post("/v1/chat/completions")
        async def chat() -> EventSourceResponse:
            return EventSourceResponse(endless(closed), ping=None)

        worker = OpenAIWorker("generate")
        worker.app = app
        job = {"openai_route": "/v1/chat/completions", "openai_input": {"stream": True}}
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in worker.handler({"id": "j", "input": job}):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), timeout=5)
        task.cancel()
        await asyncio.wait_for(closed.wait(), timeout=5)

        # The SDK closing the handler's generator between two chunks does the same.
        closed.clear()
        chunks = worker.handler({"id": "k", "input": job})
        await anext(chunks)
        await chunks.aclose()
        await asyncio.wait_for(closed.wait(), timeout=5)

    asyncio.run(run())
