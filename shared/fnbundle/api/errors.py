"""The one place where exceptions become HTTP responses.

Key rule: every error leaves as ``{"error": {"type", "message", "field"?}}`` with the
status of its :class:`~fnbundle.errors.FnbError` type; malformed JSON is a 400, a schema
violation a 422 naming the field path, and an unexpected exception a 500 whose traceback
goes to the log only. A route whose task has OpenAI's error style (``/v1/embeddings``)
gets the same statuses with OpenAI's body, ``{"error": {"message", "type", "param",
"code"}}``: ``param`` is our ``field``, ``code`` our ``type``, so SDK clients read it.
Error bodies are ASCII JSON (non-ASCII characters as ``\\uXXXX`` escapes): a message that
quotes the client's text reads the same to a client that decodes the body as Latin-1 or
guesses its charset, since the response names none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fnbundle.contract import validation_failure
from fnbundle.errors import FnbError, error_body, internal_error_body

log = logging.getLogger("fnbundle.api")

_STATUS_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


# OpenAI's error ``type`` by status (its API answers these; the rest are server errors).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The one error shape of every route."""

    error: ErrorDetail


def error_responses(
    *codes: int, ok: dict[str, Any] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a JSON route: the error body for each code, and the 200 when
    it differs from the route's own."""
    responses: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in codes}
    if ok is not None:
        responses[200] = ok
    return responses


def stream_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Errors of the event stream: a ``model`` would be documented in the route's media type,
    so these name the JSON schema the other routes register."""
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    return {code: {"content": {"application/json": {"schema": ref}}} for code in codes}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error class: invalid_request_error, server_error, ...")
    param: str | None = Field(description="The request field at fault (a dotted path).")
    code: str | None = Field(description="fnbundle's error type: not_found, limit_exceeded, ...")


class OpenAIErrorBody(BaseModel):
    """The error shape of routes in OpenAI's style (``/v1/embeddings``)."""

    error: OpenAIErrorDetail


def openai_error_body(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """Our error body as OpenAI's, for the same status."""
    ours = body.get("error", {})
    return {
        "error": {
            "message": ours.get("message", "Request failed."),
            "type": _OPENAI_TYPES.get(status, "server_error"),
            "param": ours.get("field"),
            "code": ours.get("type"),
        }
    }


def render_error(payload: dict[str, Any]) -> bytes:
    """An error body as bytes that decode the same in any ASCII-compatible charset."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class ErrorJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return render_error(content)


def _styled(request: Request, status: int, body: dict[str, Any]) -> dict[str, Any]:
    openai_paths: set[str] = getattr(request.app.state, "openai_paths", set())
    return openai_error_body(status, body) if request.url.path in openai_paths else body


def error_response(
    status: int,
    body: dict[str, Any],
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    merged = dict(headers or {})
    if retry_after:
        merged["Retry-After"] = str(int(retry_after))
    return ErrorJSONResponse(body, status_code=status, headers=merged or None)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to its status and body; the body's shape follows the route's
    task (``app.state.openai_paths``: the routes in OpenAI's error style)."""

    @app.exception_handler(FnbError)
    async def _fnb(request: Request, exc: FnbError) -> JSONResponse:
        body = _styled(request, exc.status, exc.to_body())
        return error_response(exc.status, body, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        failure = validation_failure(list(exc.errors()))
        return error_response(failure.status, _styled(request, failure.status, failure.to_body()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _STATUS_TYPES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        body = _styled(request, exc.status_code, error_body(type_, message))
        # The exception's headers carry meaning: ``Allow`` on a 405, ``Connection: close``.
        return error_response(exc.status_code, body, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, _styled(request, 500, internal_error_body()))
