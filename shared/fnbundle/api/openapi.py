"""The gateway's OpenAPI document: FastAPI's, completed with what the guards answer.

Key rule: the document lists every status a route can really answer, each error in the
one error shape, and the bearer scheme the ``/v1`` routes need when API keys are set, so
generated clients and schema fuzzers see the truth. It is done once here for every route
(the guards are shared), not route by route; a route's own declaration wins. A serving
task's route in OpenAI's error style documents OpenAI's error body, or ours for what the
guards answer before the route is reached; its request schema carries the limits of this
gateway's settings (the task's ``document``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fnbundle.api.errors import ErrorBody, OpenAIErrorBody
from fnbundle.api.middleware import PROTECTED_PREFIX
from fnbundle.api.serving import openai_paths
from fnbundle.settings import Settings
from fnbundle.tasks import REGISTRY

SCHEME = "bearer"
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
OPENAI_ERROR_REF = {"$ref": "#/components/schemas/OpenAIErrorBody"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# What the guards and the error handlers answer, by status.
DESCRIPTIONS = {
    400: "Bad request: malformed JSON, a limit exceeded, or an invalid header",
    401: "Missing or invalid API key: send one `Authorization: Bearer <key>` header",
    404: "Not found: the model or job named does not exist",
    408: "The request body did not arrive in time",
    413: "Request body over the limit",
    422: "Validation error: `error.field` is the path of the field",
    503: "Not available now (a model not ready, or the gateway busy or shutting down); "
    "see Retry-After",
}


def _error(status: int, openai: bool = False) -> dict[str, Any]:
    schema = {"anyOf": [OPENAI_ERROR_REF, ERROR_REF]} if openai else ERROR_REF
    return {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": schema}},
    }


def _statuses(path: str, operation: dict[str, Any], keys: bool) -> list[int]:
    """The guard-made statuses of one ``/v1`` operation."""
    has_body = "requestBody" in operation
    # Any input can name what does not exist: a model, a job id, a list's cursor job.
    names_something = has_body or "{" in path or bool(operation.get("parameters"))
    codes = [400, 413, 503]  # a bad header or Content-Length; busy or draining
    codes += [401] if keys else []
    codes += [404] if names_something else []
    codes += [408, 422] if has_body else []
    codes += [422] if operation.get("parameters") else []
    return sorted(set(codes))


def complete(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``schema`` with the bearer scheme, per-route security, the guards' errors and the
    serving tasks' limits."""
    keys = bool(settings.api_keys)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, model in (("ErrorBody", ErrorBody), ("OpenAIErrorBody", OpenAIErrorBody)):
        error_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error_schema.pop("$defs", {}))
        schemas.setdefault(name, error_schema)
    for task in REGISTRY.serving.values():
        for route in task.routes():
            if route.request_model.__name__ in schemas:
                task.document(schemas[route.request_model.__name__], settings)
    in_openai_style = openai_paths(list(REGISTRY.serving.values()))
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the gateway's API keys (FNB_API_KEYS).",
    }
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            responses = operation.setdefault("responses", {})
            openai = path in in_openai_style
            # FastAPI's own 422 describes its `detail` list; ours is the error shape.
            if "HTTPValidationError" in str(responses.get("422", "")):
                responses["422"] = _error(422, openai)
            if not path.startswith(PROTECTED_PREFIX):
                continue
            if keys:
                operation["security"] = [{SCHEME: []}]
            for status in _statuses(path, operation, keys):
                responses.setdefault(str(status), _error(status, openai))
    if "HTTPValidationError" not in str(schema.get("paths")):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` answer the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
