"""The runtime-neutral contract: a JSON payload in, ``(status, body)`` out.

Every runtime adapter (RunPod handlers, Modal methods, the CLI) calls :func:`run_task`
instead of validating and mapping errors itself, so the same payload gives the same body
everywhere; the gateway reaches the same bodies through FastAPI's handlers, which use the
same :func:`validation_failure` and :class:`~fnbundle.errors.FnbError` rendering.

Key rule: :func:`run_task` never raises; an unexpected exception becomes a 500 with the
generic ``internal_error`` body and its traceback goes to the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fnbundle.errors import (
    FnbError,
    InvalidJSON,
    PayloadTooLarge,
    ValidationFailed,
    internal_error_body,
)

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=BaseModel)
Result = tuple[int, dict[str, Any]]


# The names pydantic puts in an error's location for the member of a union it tried
# (``("input", "list[str]", 0)``): they are types, not fields a client sent.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "bytes"})


def _union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


def field_path(loc: Any) -> str:
    """``body.input.list[str].0`` -> ``input.0``: the path in the client's own JSON."""
    parts = [str(p) for p in loc if not _union_tag(p)]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts)


def _union_mismatch(errors: list[Any]) -> tuple[str, str] | None:
    """``("input", "expected str or list[str]")`` when every error is a member of one
    field's union refusing its value, else None."""
    tags = [next((p for p in e.get("loc", ()) if _union_tag(p)), None) for e in errors]
    if len(errors) < 2 or None in tags:
        return None
    # The field holding the union: the location up to its first member tag.
    fields = {
        field_path(loc[: [_union_tag(p) for p in loc].index(True)])
        for loc in (tuple(e.get("loc", ())) for e in errors)
    }
    if len(fields) != 1:
        return None
    kinds = list(dict.fromkeys(str(t) for t in tags))
    expected = " or ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
    return fields.pop(), f"expected {expected}"


def validation_failure(errors: list[Any]) -> FnbError:
    """A 422 naming the first offending field, or a 400 when the body is not JSON at all."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return InvalidJSON("Request body is not valid JSON.")
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request."}
    path = field_path(first.get("loc", ()))
    union = _union_mismatch(errors)
    if union is not None:
        field, expected = union
        return ValidationFailed(f"{field}: {expected}" if field else expected, field=field or None)
    message = f"{path}: {first.get('msg')}" if path else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ValidationFailed(message, field=path or None)


def parse(model: type[Req], payload: Any, max_bytes: int | None = None) -> Req:
    """Validate ``payload`` (a dict, or a JSON string/bytes) into ``model``."""
    if isinstance(payload, str | bytes):
        if max_bytes is not None and len(payload) > max_bytes:
            raise PayloadTooLarge(f"Request body is over the limit of {max_bytes} bytes.")
        try:
            payload = json.loads(payload)
        except ValueError:
            raise InvalidJSON("Request body is not valid JSON.") from None
    elif max_bytes is not None and len(json.dumps(payload, default=str)) > max_bytes:
        raise PayloadTooLarge(f"Request body is over the limit of {max_bytes} bytes.")
    if not isinstance(payload, dict):
        raise ValidationFailed("The request body must be a JSON object.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_failure(list(exc.errors())) from None


def error_result(exc: BaseException) -> Result:
    if isinstance(exc, FnbError):
        return exc.status, exc.to_body()
    log.error("unhandled error", exc_info=exc)
    return 500, internal_error_body()


def run_task(
    model: type[Req],
    payload: Any,
    fn: Callable[[Req], BaseModel],
    max_bytes: int | None = None,
) -> Result:
    """Validate, run, render: ``(200, response body)`` or ``(status, {"error": ...})``."""
    try:
        return 200, fn(parse(model, payload, max_bytes)).model_dump(mode="json")
    except Exception as exc:
        return error_result(exc)


async def run_task_async(
    model: type[Req],
    payload: Any,
    fn: Callable[[Req], Awaitable[BaseModel]],
    max_bytes: int | None = None,
) -> Result:
    try:
        return 200, (await fn(parse(model, payload, max_bytes))).model_dump(mode="json")
    except Exception as exc:
        return error_result(exc)
