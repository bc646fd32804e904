"""What an operator watches: ``GET /metrics``, the request id, ``Server-Timing``, access logs.

Key rules: every app keeps its own Prometheus registry (two apps in one process, as in the
tests, never collide on the library's global one); labels hold only bounded values: the
route *template* a request matched (``/v1/jobs/{job_id}``, never the raw path; an unknown
path is ``unmatched``), a model only once the store resolved it, a task slug, a job state.
What the app already knows when it is scraped (loaded models, jobs by state) is read then,
not counted twice. ``/metrics`` takes the API keys like ``/v1`` routes, or its own
``FNB_METRICS_KEY``, or none with ``FNB_METRICS_PUBLIC=true`` (a scraper inside a private
network). Each request gets an id (the client's ``X-Request-ID`` when it is a short printable
token, else a new one), returned in ``X-Request-ID``, put on every log line of the request
and on the job it submits; an inference answer says in ``Server-Timing`` how long it waited
for a batch (``queue``) and ran (``inference``). A streamed answer has no ``Server-Timing``:
its headers leave before the first token exists; its tokens are counted once it reports
its usage (``stream_options.include_usage``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnbundle.api.errors import render_error
from fnbundle.api.middleware import bearer_key_ok
from fnbundle.errors import error_body
from fnbundle.jobs.schema import JobStatus
from fnbundle.logs import (
    REQUEST_ID_HEADER,
    RequestContext,
    current_request,
    new_request_id,
    request_scope,
    valid_request_id,
)
from fnbundle.tasks import REGISTRY

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fnbundle.runtime.host import ModelHost
    from fnbundle.settings import Settings

access_log = logging.getLogger("fnbundle.access")

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of a path no route serves
QUIET_PATHS = frozenset({METRICS_PATH, "/healthz", "/readyz"})  # probes: access lines at debug
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # items per forward pass
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)  # seconds
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Metrics:
    """The app's collectors, in a registry of its own (see the module's key rules)."""

    def __init__(self, host: ModelHost, jobs: Any | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fnbundle_requests",
            "HTTP requests by route template, method, status and model.",
            ["route", "method", "status", "model"],
            registry=r,
        )
        self.latency = Histogram(
            "fnbundle_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            ["route", "method", "model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "fnbundle_queue_wait_seconds",
            "Time a request's items waited in its model's batch queue.",
            ["task", "model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "fnbundle_inference_seconds",
            "Time a request's model ran for it (its batches' forward passes).",
            ["task", "model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "fnbundle_batch_size",
            "Items in each forward pass of a model's dynamic batcher.",
            ["task", "model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.load_time = Histogram(
            "fnbundle_model_load_seconds",
            "How long each model load took.",
            ["task", "backend"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "fnbundle_generated_tokens",
            "Tokens generated (answers that report their usage).",
            ["model"],
            registry=r,
        )
        self.tokens_per_s = Histogram(
            "fnbundle_generation_tokens_per_second",
            "Generated tokens per second of each generation request.",
            ["model"],
            buckets=TOKENS_PER_S_BUCKETS,
            registry=r,
        )
        r.register(_StateCollector(host, jobs))

    # --- what the model host reports (runtime.host.HostObserver) ------------------------
    def model_loaded(self, task: str, model: str, backend: str, load_s: float) -> None:
        self.load_time.labels(task, backend).observe(load_s)

    def batch_observer(self, task: str, model: str) -> Callable[[int], None]:
        return self.batch_size.labels(task, model).observe

    # --- one finished request -----------------------------------------------------------
    def observe(self, route: str, method: str, status: int, context: RequestContext) -> float:
        """Count the request; return its duration (seconds)."""
        elapsed_s = time.perf_counter() - context.started
        model = context.model or ""
        self.requests.labels(route, method, str(status), model).inc()
        self.latency.labels(route, method, model).observe(elapsed_s)
        task = context.task or ""
        if context.queue_s is not None:
            self.queue_wait.labels(task, model).observe(context.queue_s)
        if context.inference_s is not None:
            self.inference.labels(task, model).observe(context.inference_s)
        if context.generated_tokens is not None:
            self.tokens.labels(model).inc(context.generated_tokens)
            if context.generation_s:
                rate = context.generated_tokens / context.generation_s
                self.tokens_per_s.labels(model).observe(rate)
        return elapsed_s

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Read at scrape time: the models loaded now and their load times, jobs by state."""

    def __init__(self, host: ModelHost, jobs: Any | None) -> None:
        self.host = host
        self.jobs = jobs

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily(
            "fnbundle_model_loaded",
            "1 for each model loaded now.",
            labels=["task", "model", "backend"],
        )
        load_s = GaugeMetricFamily(
            "fnbundle_model_load_duration_seconds",
            "How long each model loaded now took to load.",
            labels=["task", "model", "backend"],
        )
        for task, model, backend, seconds in self.host.loaded_models():
            loaded.add_metric([task, model, backend], 1)
            load_s.add_metric([task, model, backend], seconds)
        yield loaded
        yield load_s
        counts = getattr(self.jobs, "counts", None)
        if counts is None:
            return
        jobs = GaugeMetricFamily(
            "fnbundle_jobs", "Jobs by task and state.", labels=["task", "state"]
        )
        try:
            found = counts()
        except Exception:  # a store that cannot answer now: the scrape goes on without it
            logging.getLogger(__name__).warning("counting jobs failed", exc_info=True)
            return
        # Every task and state, zeros included: a dashboard's series exist before a job does.
        every = {(task, state.value): 0 for task in REGISTRY.training for state in JobStatus}
        for (task, state), n in sorted((every | found).items()):
            jobs.add_metric([task, state], n)
        yield jobs


def _completion_tokens(usage: Any) -> int | None:
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if tokens is None:
        tokens = getattr(usage, "completion_tokens", None)
    return tokens if isinstance(tokens, int) else None


def note_answer(answer: Any) -> None:
    """A whole answer that reports generated tokens (``usage.completion_tokens``): count
    them against the time the model took."""
    context = current_request()
    tokens = _completion_tokens(getattr(answer, "usage", None))
    if context is not None and tokens is not None and context.inference_s is not None:
        context.note_generated(tokens, context.inference_s)


def route_template(scope: Scope) -> str:
    """The path template of the route ``scope`` matched (or would have: a request the
    guards refused), or :data:`UNMATCHED`."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", [])
    return _matching_path(routes, scope) or UNMATCHED


def _matching_path(routes: Iterable[Any], scope: Scope) -> str | None:
    for candidate in routes:
        # FastAPI keeps an included router as one entry: look at its own routes.
        inner = getattr(candidate, "original_router", None)
        if inner is not None:
            found = _matching_path(inner.routes, scope)
            if found is not None:
                return found
            continue
        match, child = candidate.matches(scope)
        if match is not Match.NONE:
            path = getattr(child.get("route"), "path", None) or getattr(candidate, "path", None)
            return str(path) if path is not None else None
    return None


def server_timing(context: RequestContext) -> str | None:
    """``queue;dur=<ms>, inference;dur=<ms>``: the parts this request measured, or None."""
    parts = [
        f"{name};dur={seconds * 1000:.2f}"
        for name, seconds in (("queue", context.queue_s), ("inference", context.inference_s))
        if seconds is not None
    ]
    return ", ".join(parts) or None


class ObservabilityMiddleware:
    """Outermost: the request id, ``Server-Timing``, the count, the access log line."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (v for k, v in scope.get("headers", []) if k.lower() == REQUEST_ID_HEADER.encode()),
            None,
        )
        context = RequestContext(valid_request_id(given) or new_request_id())
        status = 500  # unless a response starts: an exception the server answers itself

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), context.request_id.encode()),
                ]
                timing = server_timing(context)
                if timing is not None:
                    headers.append((b"server-timing", timing.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with request_scope(context):
            try:
                await self.app(scope, receive, observed_send)
            finally:
                self._finish(scope, status, context)

    def _finish(self, scope: Scope, status: int, context: RequestContext) -> None:
        route = route_template(scope)
        method = scope["method"]
        elapsed_s = self.metrics.observe(route, method, status, context)
        level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
        if status >= 500:
            level = logging.WARNING
        duration_ms = round(elapsed_s * 1000, 2)
        client = scope.get("client")
        access_log.log(
            level,
            "%s %s %d %.2f ms%s",
            method,
            route,
            status,
            duration_ms,
            f" from {client[0]}" if client else "",
            extra={
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "model": context.model,
            },
        )


def _metrics_keys(settings: Settings) -> list[bytes]:
    """The keys GET /metrics takes: its own, else the API keys; none means open."""
    if settings.metrics_key is not None:
        return [settings.metrics_key.get_secret_value().encode()]
    return [k.encode() for k in settings.api_keys]


def install_observability(app: FastAPI, settings: Settings, host: ModelHost) -> Metrics:
    """The metrics of ``app`` (on ``app.state.metrics``), ``GET /metrics``, and the
    middleware; call after the other middleware, so this one runs first."""
    metrics = Metrics(host, app.state.jobs)
    host.observer = metrics
    app.state.metrics = metrics
    keys = [] if settings.metrics_public else _metrics_keys(settings)

    def prometheus_metrics(request: Request) -> Response:
        """The gateway's metrics in Prometheus' text format."""
        if keys and not bearer_key_ok(request.headers.raw, keys):
            body = render_error(
                error_body(
                    "unauthorized",
                    "Missing or invalid metrics key: send one 'Authorization: Bearer <key>' "
                    "header (FNB_METRICS_KEY, or an API key).",
                )
            )
            return Response(
                body,
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(METRICS_PATH, prometheus_metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return metrics
