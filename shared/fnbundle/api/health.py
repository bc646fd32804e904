"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (says nothing about models)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """200 once the preloaded models are loaded; 503 before (or if none could load)."""
    readiness = request.app.state.readiness
    body = {"status": "ready" if readiness.ready else "loading", "models": readiness.models}
    if readiness.done and not readiness.ready:
        body["status"] = "failed"
    if not readiness.ready:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    if any(v != "ready" for v in readiness.models.values()):
        body["status"] = "degraded"
    return body
