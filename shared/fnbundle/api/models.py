"""GET /v1/models and GET /v1/models/{model}: what the store holds."""

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
        state = MODEL_CACHE.state((artifact.id, pick_backend(artifact, service.settings.backend)))
    except FnbError:
        state = None
    return {**artifact.summary(), "latest": artifact.id in latest, "state": state or "not_loaded"}


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
