"""A RunPod worker that answers through the gateway app itself, in RunPod's OpenAI-route
convention as well as with our own request bodies.

RunPod's serverless endpoints expose ``https://api.runpod.ai/v2/<id>/openai/v1``: a client
such as ``OpenAI(base_url=".../openai/v1")`` posts there and RunPod hands the worker a job
whose input is ``{"openai_route": "/v1/chat/completions" | "/v1/completions" |
"/v1/models", "openai_input": {...}}`` (RunPod's worker-vllm reads the same shape). A job
whose input has no ``openai_route`` is the task route's body, as for every other worker.

The job is answered by the gateway's own FastAPI app (``create_app``), called in process
over ASGI: the same routes, schemas, limits, error bodies and models list as the local
gateway and Modal, with nothing re-implemented here. The handler is an async generator
(RunPod streams what it yields; ``return_aggregate_stream`` gives ``/runsync`` the list):

* an OpenAI route with ``"stream": true`` yields the route's server-sent events as text,
  chunk by chunk (``data: {...}\\n\\n``, ending ``data: [DONE]``), which RunPod's OpenAI
  proxy passes to the client as they come; otherwise it yields the JSON body once, errors
  in OpenAI's ``{"error": {...}}`` shape;
* our own bodies yield each streamed chunk's JSON object, or the body once; an error is
  ``{"error": "<JSON>"}`` as from every other worker (:func:`fnbundle.runpod_worker.job_output`).

Key rules: the handler never raises; a client going away (RunPod cancels the job) closes
the app's stream, which stops the sequence in the engine; bearer keys are RunPod's (its
endpoint key), so the in-process app checks none; building a worker loads nothing and
imports no runpod, torch or vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fnbundle.api.errors import openai_error_body
from fnbundle.contract import error_result
from fnbundle.endpoints import get_endpoint
from fnbundle.errors import InvalidRequest, NotFound
from fnbundle.logs import configure_logging
from fnbundle.runpod_worker import (
    job_output,
    preload_endpoint_model,
    worker_concurrency,
    worker_settings,
)
from fnbundle.settings import Settings, get_settings
from fnbundle.tasks import REGISTRY

# The routes RunPod's OpenAI proxy forwards, and the method each is called with.
OPENAI_ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/models": "GET",
}
SSE_DONE = "[DONE]"


@dataclass(frozen=True)
class Call:
    """One job as an HTTP request to the app, and how its answer is handed back."""

    method: str
    path: str
    body: dict[str, Any] | None
    openai: bool  # RunPod's OpenAI-route convention (SSE text, OpenAI errors)

    @property
    def stream(self) -> bool:
        return bool(self.body and self.body.get("stream") is True)


def parse_job(job_input: Any, task_route: str) -> Call:
    """The request a job's input stands for; InvalidRequest / NotFound when it is none."""
    if not isinstance(job_input, dict):
        raise InvalidRequest("The job's input must be a JSON object.", field="input")
    if "openai_route" not in job_input:
        return Call("POST", task_route, job_input, openai=False)
    route = job_input["openai_route"]
    if route not in OPENAI_ROUTES:
        raise NotFound(
            f"Unknown openai_route {route!r}; served: {', '.join(OPENAI_ROUTES)}.",
            field="openai_route",
        )
    body = job_input.get("openai_input")
    if body is not None and not isinstance(body, dict):
        raise InvalidRequest("openai_input must be a JSON object.", field="openai_input")
    method = OPENAI_ROUTES[route]
    if method == "POST" and body is None:
        raise InvalidRequest(f"{route} needs openai_input, its request body.", field="openai_input")
    return Call(method, route, body if method == "POST" else None, openai=True)


# --- one in-process request to an ASGI app --------------------------------------------
@dataclass
class Response:
    status: int
    content_type: str
    chunks: AsyncGenerator[bytes, None]  # the body as the app sends it; close it to stop the app


async def call_app(app: Any, method: str, path: str, body: bytes | None) -> Response:
    """Send one HTTP request to ``app`` (ASGI) in this event loop and return as soon as the
    response starts; its body streams as the app writes it. Closing ``chunks`` tells the
    app the client went away (``http.disconnect``) and waits for it to finish."""
    messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    gone = asyncio.Event()
    pending = [{"type": "http.request", "body": body or b"", "more_body": False}]
    headers = [(b"host", b"runpod-worker")]
    if body is not None:
        headers += [(b"content-type", b"application/json")]
        headers += [(b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("runpod-worker", 80),
        "state": {},
    }

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    start = await messages.get()
    if start is None or start["type"] != "http.response.start":
        gone.set()
        await task  # re-raises what the app raised before answering
        raise RuntimeError(f"{method} {path}: the app ended without a response")
    content_type = ""
    for name, value in start.get("headers", []):
        if name.lower() == b"content-type":
            content_type = value.decode("latin-1")

    async def chunks() -> AsyncGenerator[bytes, None]:
        try:
            while (message := await messages.get()) is not None:
                if message["type"] != "http.response.body":
                    continue
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        finally:
            gone.set()
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return Response(int(start["status"]), content_type, chunks())


def sse_events(text: str) -> tuple[list[str], str]:
    """The ``data:`` payloads of the complete events in ``text``, and the incomplete rest."""
    *complete, rest = text.replace("\r\n", "\n").split("\n\n")
    events = []
    for event in complete:
        data = [line[5:].lstrip() for line in event.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events, rest


# --- the worker -----------------------------------------------------------------------
class OpenAIWorker:
    """One RunPod worker of the serving task ``slug`` answering through the gateway app."""

    def __init__(self, slug: str):
        self.task = REGISTRY.serving_task(slug)
        self.endpoint = slug  # its entry in deploy/endpoints.toml
        self.log = logging.getLogger(f"fnbundle.handlers.{slug}")
        self.app: Any = None  # built by setup(): by start(), or by the first job in tests

    def setup(self, settings: Settings | None = None) -> Any:
        """Load the endpoint's models (``FNB_PRELOAD`` overrides), then build the app."""
        from fnbundle.api import create_app
        from fnbundle.runtime.host import ModelHost

        if settings is None:
            settings = preload_endpoint_model(worker_settings(), get_endpoint(self.endpoint).model)
        settings = settings.model_copy(update={"api_keys": []})  # RunPod checked its key
        host = ModelHost(settings)
        status = host.preload()
        host.mark_preloaded(status)
        self.log.info("store %s; models: %s", settings.store_root, status or "(store is empty)")
        self.app = create_app(settings, host=host, jobs=False)
        return self.app

    async def handler(self, job: dict[str, Any]) -> AsyncIterator[Any]:
        """One RunPod job; see the module docstring for what it yields."""
        call: Call | None = None
        try:
            call = parse_job(job.get("input"), self.task.route)
            app = self.app or self.setup()
            body = None if call.body is None else json.dumps(call.body).encode()
            response = await call_app(app, call.method, call.path, body)
        except Exception as exc:  # bad input, no store: answer the job, log the cause
            status, error = error_result(exc)
            openai = call.openai if call is not None else _names_openai_route(job)
            if openai or self.task.error_style == "openai":
                error = openai_error_body(status, error)
            yield error if openai else job_output(error)
            return
        try:
            async for item in self._answer(call, response):
                yield item
        finally:  # done, or the job was cancelled: the app's stream stops its generation
            await response.chunks.aclose()

    async def _answer(self, call: Call, response: Response) -> AsyncIterator[Any]:
        streaming = response.status == 200 and response.content_type.startswith("text/event-stream")
        if streaming and call.openai:
            async for chunk in response.chunks:
                yield chunk.decode("utf-8")
            return
        if streaming:
            rest = ""
            async for chunk in response.chunks:
                events, rest = sse_events(rest + chunk.decode("utf-8"))
                for data in events:
                    if data != SSE_DONE:
                        yield json.loads(data)
            return
        raw = b"".join([chunk async for chunk in response.chunks])
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"error": {"type": "internal_error", "message": "The app answered non-JSON."}}
        yield body if call.openai else job_output(body)

    def start(self) -> None:
        """Load the models, then serve jobs (RunPod's flags are read from ``sys.argv``)."""
        import runpod

        configure_logging(get_settings().log_format)  # RunPod's log stream: the gateway's lines
        self.setup()
        concurrency = worker_concurrency(self.app.state.settings, self.endpoint)
        runpod.serverless.start(
            {
                "handler": self.handler,
                "concurrency_modifier": lambda _current: concurrency,
                "return_aggregate_stream": True,  # /runsync answers with everything yielded
            }
        )


def _names_openai_route(job: Any) -> bool:
    job_input = job.get("input") if isinstance(job, dict) else None
    return isinstance(job_input, dict) and "openai_route" in job_input
