"""One POST route per serving task in the registry (``/v1/classify``, ``/v1/embeddings``, ...).

Key rule: a route is generated, not written: the task declares its route, request and
response models, summary and error style; the route parses, hands the request to the
model host (limits, load, batch, run) and returns. No route module names a task.
"""

# No ``from __future__ import annotations``: FastAPI reads the generated endpoint's
# annotations, which are the task's own request and response classes.

from typing import Any

from fastapi import APIRouter, Request

from fnbundle.tasks.base import ServingTask


def task_router(task: ServingTask[Any, Any, Any]) -> APIRouter:
    """The POST route of ``task``, documented with its models and summary."""
    router = APIRouter(tags=[task.slug])
    request_model = task.request_model

    async def endpoint(body: request_model, request: Request) -> Any:  # type: ignore[valid-type]
        return await request.app.state.host.serve(task, body)

    endpoint.__name__ = task.slug
    endpoint.__doc__ = task.summary
    router.add_api_route(
        task.route,
        endpoint,
        methods=["POST"],
        response_model=task.response_model,
        summary=task.summary,
    )
    return router
