"""The one error vocabulary of fnbundle and its mapping to HTTP status codes.

Key rule: expected failures (bad input, unknown model, model not ready, corrupt
artifact) are raised as a :class:`FnbError` subclass and rendered everywhere as
``{"error": {"type", "message", "field"?}}``. Users never see a traceback; anything else
is a bug and becomes a 500 ``internal_error`` whose details stay in the server log.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FnbError(Exception):
    """Base of every expected error. ``status`` is the HTTP status it maps to."""

    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def to_body(self) -> dict[str, Any]:
        return error_body(self.type, self.message, self.field)


class InvalidRequest(FnbError):
    status, type = 400, "invalid_request"


class InvalidJSON(FnbError):
    status, type = 400, "invalid_json"


class LimitExceeded(FnbError):
    status, type = 400, "limit_exceeded"


class ValidationFailed(FnbError):
    status, type = 422, "validation_error"


class Unauthorized(FnbError):
    status, type = 401, "unauthorized"


class NotFound(FnbError):
    status, type = 404, "not_found"


class Conflict(FnbError):
    status, type = 409, "conflict"


class PayloadTooLarge(FnbError):
    status, type = 413, "payload_too_large"


class ModelNotReady(FnbError):
    status, type = 503, "model_not_ready"


class ArtifactCorrupt(FnbError):
    status, type = 503, "artifact_corrupt"


class UpstreamUnavailable(FnbError):
    """A service we depend on (the Hugging Face Hub) did not answer; retry later."""

    status, type = 503, "upstream_unavailable"


class UnsafeArtifact(FnbError):
    """A model in a format that can execute code on load (pickle, remote code)."""

    status, type = 400, "unsafe_artifact"


class DatasetError(FnbError):
    status, type = 400, "invalid_dataset"


class TrainingFailed(FnbError):
    status, type = 500, "training_failed"


class TrainingStopped(FnbError):
    """Training stopped on request (cancel, budget, time limit), after a checkpoint.

    ``reason`` is what the stop request said, ``step`` the last completed optimizer step,
    ``metrics`` those of the last completed evaluation (``{}`` before the first one).
    """

    status, type = 409, "training_stopped"

    def __init__(self, message: str, *, reason: str, step: int, metrics: dict[str, Any] | None):
        super().__init__(message)
        self.reason = reason
        self.step = step
        self.metrics = metrics or {}


class QueueFull(FnbError):
    """Too many jobs are waiting; ``retry_after`` (seconds) becomes the Retry-After header."""

    status, type = 429, "queue_full"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message, retry_after=max(1.0, retry_after))


def error_body(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def internal_error_body() -> dict[str, Any]:
    return error_body("internal_error", "Internal error; the server log has the details.")
