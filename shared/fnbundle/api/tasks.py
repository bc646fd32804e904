"""GET /v1/tasks: every task the registry holds, as a client needs it to build a form.

A serving task lists its routes, each with its request JSON schema, whether it streams,
and the renderer the playground (``GET /``) uses for it; the task's example request and
its error style. A training task lists its params JSON schema and example, the serving
task its models feed, and its hardware class.

Key rule: nothing here names a task. A route's renderer is the one it declares
(``Route.ui``), else it is read from the shape of its schemas (:func:`ui_of`): a list of
``{role, content}`` objects is a chat, free-form objects are table rows, a response
carrying vectors of numbers is an embedding (compared as a similarity), a required list of
strings is texts; anything else is a form generated from the schema. A new task appears in
the playground without a change to the page.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fnbundle.tasks import REGISTRY
from fnbundle.tasks.base import Route, ServingTask, TrainingTask

router = APIRouter(tags=["tasks"])

Schema = dict[str, Any]


class UiHint(BaseModel):
    """How the playground renders a route: a ``kind`` and the request field it fills."""

    kind: str = Field(description="texts, rows, chat, similarity or form.")
    field: str | None = Field(None, description="The request field the renderer fills.")
    vectors: str | None = Field(
        None, description="similarity: where the vectors are in the answer, e.g. data.embedding."
    )


class RouteInfo(BaseModel):
    path: str
    method: str = "POST"
    summary: str
    streams: bool = Field(description="It answers server-sent events when asked to stream.")
    request_schema: Schema
    ui: UiHint


class ServingInfo(BaseModel):
    slug: str
    kind: str = "serving"
    summary: str
    noun: str = Field(description="What its models are called in messages.")
    error_style: str = Field(description="fnbundle ({error: {type, message, field}}) or openai.")
    example: dict[str, Any] = Field(description="A request that works against the demo store.")
    routes: list[RouteInfo]


class TrainingInfo(BaseModel):
    slug: str
    kind: str = "training"
    summary: str
    serves: str = Field(description="The serving task of the models it publishes.")
    hardware: str = Field(description="cpu or gpu: where its jobs run on a cloud platform.")
    params_schema: Schema
    example: dict[str, Any] = Field(description="Params of a job on a file of data/.")


class TaskList(BaseModel):
    serving: list[ServingInfo]
    training: list[TrainingInfo]
    jobs: bool = Field(description="Whether this endpoint takes training jobs (POST /v1/jobs).")


def _resolve(node: Schema, defs: Schema) -> Schema:
    """``node`` with a local ``$ref`` followed (one level)."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return dict(defs.get(ref.removeprefix("#/$defs/"), {}))
    return node


def _variants(node: Schema, defs: Schema) -> list[Schema]:
    """The alternatives of ``node`` (its ``anyOf`` / ``oneOf``, or itself), resolved."""
    options = node.get("anyOf") or node.get("oneOf") or [node]
    return [_resolve(option, defs) for option in options]


def _items(node: Schema, defs: Schema) -> list[Schema]:
    """The item schemas of every array variant of ``node``."""
    return [
        _resolve(v.get("items", {}), defs)
        for v in _variants(node, defs)
        if v.get("type") == "array"
    ]


def _is_message(item: Schema) -> bool:
    return {"role", "content"} <= set(item.get("required", []))


def _is_record(item: Schema) -> bool:
    return item.get("type") == "object" and not item.get("properties")


def _is_strings(node: Schema, defs: Schema) -> bool:
    return any(i.get("type") == "string" for i in _items(node, defs))


def _vectors(response: Schema) -> str | None:
    """Where a response carries vectors of numbers: ``<list field>.<vector field>``."""
    defs = response.get("$defs", {})
    for name, node in response.get("properties", {}).items():
        for item in _items(node, defs):
            for inner, prop in item.get("properties", {}).items():
                if any(i.get("type") == "number" for i in _items(prop, defs)):
                    return f"{name}.{inner}"
    return None


def ui_of(route: Route) -> UiHint:
    """The renderer of ``route``: the one it declares, else one read from its schemas."""
    request = route.request_model.model_json_schema()
    defs, props = request.get("$defs", {}), request.get("properties", {})
    required = set(request.get("required", []))
    declared = route.ui
    for name, node in props.items():
        if declared in (None, "chat") and any(_is_message(i) for i in _items(node, defs)):
            return UiHint(kind="chat", field=name)
    vectors = _vectors(route.response_model.model_json_schema())
    if declared in (None, "similarity") and vectors is not None:
        for name in sorted(props, key=lambda n: n not in required):
            if name != "model" and _is_strings(props[name], defs):
                return UiHint(kind="similarity", field=name, vectors=vectors)
    for name, node in props.items():
        if declared in (None, "rows") and any(_is_record(i) for i in _items(node, defs)):
            return UiHint(kind="rows", field=name)
    for name in props:
        if declared in (None, "texts") and name in required and _is_strings(props[name], defs):
            return UiHint(kind="texts", field=name)
    return UiHint(kind="form")


def serving_info(task: ServingTask[Any, Any, Any]) -> ServingInfo:
    return ServingInfo(
        slug=task.slug,
        summary=task.summary,
        noun=task.noun,
        error_style=task.error_style,
        example=task.example,
        routes=[
            RouteInfo(
                path=route.path,
                summary=route.summary,
                streams=route.streams,
                request_schema=route.request_model.model_json_schema(),
                ui=ui_of(route),
            )
            for route in task.routes()
        ],
    )


def training_info(task: TrainingTask[Any]) -> TrainingInfo:
    return TrainingInfo(
        slug=task.slug,
        summary=task.summary,
        serves=task.serves,
        hardware=task.hardware,
        params_schema=task.params_model.model_json_schema(),
        example=task.example,
    )


@router.get("/v1/tasks", response_model=TaskList)
def list_tasks(request: Request) -> TaskList:
    """Every serving task (routes, request schemas, example, error style) and training task
    (params schema, the serving task it feeds, hardware class) this gateway knows, and
    whether it takes training jobs (a serving-only deployment does not)."""
    return TaskList(
        serving=[serving_info(t) for t in REGISTRY.serving.values()],
        training=[training_info(t) for t in REGISTRY.training.values()],
        jobs=getattr(request.app.state, "jobs", None) is not None,
    )
