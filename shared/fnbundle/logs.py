"""Logs for operators: one format for the gateway, Modal and RunPod, and the request id.

Key rules: ``FNB_LOG_FORMAT=json`` writes one JSON object per line (``time``, ``level``,
``logger``, ``message``, and when known ``request_id``, ``route``, ``status``,
``duration_ms``, ``model``), anything else the readable text line; every runtime calls
:func:`configure_logging` once at start, so a platform's log stream (Modal's, RunPod's)
carries the same lines as the gateway's terminal. A request's id lives in a context
variable for the time of the request, so every line logged while serving it, and a job it
submits, carries it without being passed along by hand. A client's ``X-Request-ID`` is kept
only when it is a short printable token (:func:`valid_request_id`); otherwise a new one is
made, so a log line never holds what a stranger chose to put there.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# Letters, digits and the punctuation ids from tracing systems use; no spaces, quotes,
# commas or control characters (they would break a header list or a text log line).
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID_CHARS}}}")

TEXT_FORMAT = "%(levelname)-7s| %(name)s | %(message)s"
# Fields a log call may pass with ``extra=`` that the JSON line shows under the same name.
REQUEST_FIELDS = ("request_id", "route", "status", "duration_ms", "model")


@dataclass
class RequestContext:
    """What one request learns about itself on its way through the gateway: its id, the
    route it matched, the task and model that served it, and where its time went."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)  # perf_counter seconds
    task: str | None = None
    model: str | None = None  # the served artifact's id, once the store resolved it
    queue_s: float | None = None  # waiting for a batch (the batcher's queue)
    inference_s: float | None = None  # running the model
    served_at: float | None = None  # perf_counter when the model was in hand
    generated_tokens: int | None = None  # a generation's completion tokens, once reported
    generation_s: float | None = None  # the time they took

    def note_generated(self, tokens: int, seconds: float) -> None:
        """A generation's completion tokens and the time they took, for GET /metrics."""
        self.generated_tokens, self.generation_s = tokens, seconds

    def add_batch_timing(self, queue_s: float, inference_s: float) -> None:
        """One batched call of this request: a request may make several (they add up)."""
        self.queue_s = (self.queue_s or 0.0) + queue_s
        self.inference_s = (self.inference_s or 0.0) + inference_s


_current: ContextVar[RequestContext | None] = ContextVar("fnbundle_request", default=None)


def current_request() -> RequestContext | None:
    """The request being served in this context (an asyncio task, or a thread it runs)."""
    return _current.get()


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None


@contextmanager
def request_scope(context: RequestContext) -> Iterator[RequestContext]:
    """Make ``context`` the current request until the block ends."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | bytes | None) -> str | None:
    """``value`` when it is a printable token of at most :data:`MAX_REQUEST_ID_CHARS`
    characters, else None (the caller makes a new id)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _REQUEST_ID.fullmatch(value) else None


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the fields of the module docstring, an exception's
    traceback under ``exc_info``; fields without a value are left out."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_handler(
    log_format: LogFormat, text_format: str = TEXT_FORMAT, stream: IO[str] | None = None
) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) in ``log_format``, the request id stamped
    on each record."""
    handler = _Handler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(text_format))
    handler.addFilter(RequestIdFilter())
    return handler


class _Handler(logging.StreamHandler[IO[str]]):
    """The handler :func:`configure_logging` installs (so a second call replaces it)."""


def configure_logging(
    log_format: LogFormat,
    *,
    level: int = logging.INFO,
    package_level: int | None = None,
    text_format: str = TEXT_FORMAT,
) -> None:
    """Route every logger to stderr in ``log_format`` (the platforms' log streams read it).

    Replaces the root logger's handlers (a platform SDK that configured its own format on
    import, like RunPod's, included); ``package_level`` sets the level of our loggers and
    the HTTP server's (``fnbundle``, ``uvicorn``) apart from the root's (the gateway keeps
    other libraries at warnings).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(log_handler(log_format, text_format))
    root.setLevel(level)
    if package_level is not None:
        for name in ("fnbundle", "uvicorn"):
            logging.getLogger(name).setLevel(package_level)
