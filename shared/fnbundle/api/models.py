"""GET /v1/models and GET /v1/models/{model}: what the store holds.

Key rule: each model says its state (``not_loaded``, ``loading``, ``ready``, ``failed``) and,
when it failed, the ``reason`` a request for it is answered with (a 503).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from fnbundle.classifier import pick_backend
from fnbundle.errors import FnbError
from fnbundle.loading import MODEL_CACHE

router = APIRouter(tags=["models"])


def _describe(request: Request, ref: str, latest: set[str]) -> dict[str, Any]:
    service = request.app.state.classify
    artifact = service.artifact(ref)
    try:
        key = (artifact.id, pick_backend(artifact, service.settings.backend))
    except FnbError as exc:  # no weights the configured backend can use
        return {
            **artifact.summary(),
            "latest": artifact.id in latest,
            "state": "failed",
            "reason": exc.message,
        }
    described = {
        **artifact.summary(),
        "latest": artifact.id in latest,
        "state": MODEL_CACHE.state(key) or "not_loaded",
    }
    reason = MODEL_CACHE.reason(key)
    if reason is not None:
        described["reason"] = reason
    return described


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model version in the store, newest last; ``latest`` marks what a name serves."""
    store = request.app.state.classify.store
    latest = set(store.latest_ids().values())
    return {"data": [_describe(request, a.id, latest) for a in store.list()]}


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    """One model (by name or version id) with its metrics and manifest summary."""
    store = request.app.state.classify.store
    return _describe(request, model, set(store.latest_ids().values()))
