"""The one place where exceptions become HTTP responses.

Key rule: every error leaves as ``{"error": {"type", "message", "field"?}}`` with the
status of its :class:`~fnbundle.errors.FnbError` type; malformed JSON is a 400, a schema
violation a 422 naming the field path, and an unexpected exception a 500 whose traceback
goes to the log only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


def error_response(
    status: int,
    body: dict[str, Any],
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    merged = dict(headers or {})
    if retry_after:
        merged["Retry-After"] = str(int(retry_after))
    return JSONResponse(body, status_code=status, headers=merged or None)


def validation_error_response(errors: list[Any]) -> JSONResponse:
    exc = validation_failure(errors)
    return error_response(exc.status, exc.to_body())


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FnbError)
    async def _fnb(_: Request, exc: FnbError) -> JSONResponse:
        return error_response(exc.status, exc.to_body(), exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _STATUS_TYPES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        # The exception's headers carry meaning: ``Allow`` on a 405, ``Connection: close``.
        return error_response(exc.status_code, error_body(type_, message), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, internal_error_body())
