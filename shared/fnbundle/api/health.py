"""Liveness and readiness probes.

Key rule: the probes need no key, so they say no more than a stranger may know. With
API keys set, ``/readyz`` answers only ready or not (its status code and ``status``);
the models and their load errors (which name files) are shown with a valid key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fnbundle.api.middleware import bearer_key_ok

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (says nothing about models)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={503: {"description": "Models still loading, or none could load"}},
)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """200 once the preloaded models are loaded; 503 before (or if none could load). With
    API keys set, the per-model detail needs a valid bearer key."""
    readiness = request.app.state.host.readiness
    keys = [k.encode() for k in request.app.state.settings.api_keys]
    status = "ready" if readiness.ready else "loading"
    if readiness.done and not readiness.ready:
        status = "failed"
    elif readiness.ready and any(v != "ready" for v in readiness.models.values()):
        status = "degraded"
    body: dict[str, Any] = {"status": status}
    if not keys or bearer_key_ok(request.scope["headers"], keys):
        body["models"] = readiness.models
    if not readiness.ready:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return body
