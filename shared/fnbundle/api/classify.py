"""POST /v1/classify."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fnbundle.tasks.classify import ClassifyRequest, ClassifyResponse

router = APIRouter(tags=["classify"])


@router.post("/v1/classify", response_model=ClassifyResponse)
async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
    """Classify up to ``FNB_MAX_TEXTS`` texts with a model from the store."""
    return await request.app.state.classify.classify(body)
