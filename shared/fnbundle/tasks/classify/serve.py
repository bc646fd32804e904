"""The ``classify`` serving task as the registry lists it: limits, loading, batched runs.

Key rules: limits are checked before any model work and answered with a 400 naming the
limit; the HTTP API serves store models only (a name or version id, never a path or a Hub
reference); models load once per process through the model host, and a request for a
model still loading waits at most ``load_wait_s`` before a 503. Concurrent requests share
forward passes in the host's batcher: it runs ``predict_proba`` on their texts, tokenized
per batch (one ``encode_batch`` call in Rust: tokenizing each request in its coroutine
instead measured 0.74-0.81x at 128 tokens through the gateway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from fnbundle.settings import Settings
from fnbundle.store import Artifact
from fnbundle.tasks.base import Batch, ServingTask
from fnbundle.tasks.classify import TASK
from fnbundle.tasks.classify.model import TextClassifier, listed_labels, pick_backend
from fnbundle.tasks.classify.schema import (
    ClassifyRequest,
    ClassifyResponse,
    Prediction,
    check_limits,
    document_limits,
)


class ClassifyTask(ServingTask[ClassifyRequest, ClassifyResponse, TextClassifier]):
    slug: ClassVar[str] = TASK
    route: ClassVar[str] = "/v1/classify"
    summary: ClassVar[str] = "Classify up to FNB_MAX_TEXTS texts with a model from the store."
    noun: ClassVar[str] = "a classifier"
    request_model = ClassifyRequest
    response_model = ClassifyResponse
    example: ClassVar[dict[str, Any]] = {
        "model": "sentiment",
        "texts": ["Arrived early and works great.", "Cold food, rude staff."],
    }

    def default_backend(self, settings: Settings) -> str:
        return settings.classify_backend

    def backend(self, request: ClassifyRequest, settings: Settings) -> str:
        return request.backend or settings.classify_backend

    def check_limits(self, request: ClassifyRequest, settings: Settings) -> None:
        check_limits(request, settings)

    def document(self, schema: dict[str, Any], settings: Settings) -> None:
        document_limits(schema, settings)

    def describe(self, artifact: Artifact) -> dict[str, Any]:
        return {"labels": listed_labels(artifact)}

    def pick_backend(self, artifact: Artifact, requested: str) -> str:
        return pick_backend(artifact, requested)

    def files(self, artifact: Artifact, backend: str) -> list[str]:
        return TextClassifier.files_for(artifact, backend)

    def load(self, artifact: Artifact, backend: str, settings: Settings) -> TextClassifier:
        return TextClassifier.load(artifact, backend, settings)

    def batch_fn(self, model: TextClassifier) -> Callable[[list[Any]], np.ndarray]:
        return model.predict_proba

    async def run(
        self,
        model: TextClassifier,
        request: ClassifyRequest,
        batch: Batch | None,
        settings: Settings,
    ) -> ClassifyResponse:
        probs = await batch.submit(request.texts) if batch else model.predict_proba(request.texts)
        return _response(model, model.format(probs))

    def run_sync(
        self, model: TextClassifier, request: ClassifyRequest, settings: Settings
    ) -> ClassifyResponse:
        return _response(model, model.predict(request.texts))


def _response(model: TextClassifier, predictions: list[dict[str, Any]]) -> ClassifyResponse:
    return ClassifyResponse(
        model=model.model_id,
        backend=model.backend,
        predictions=[Prediction(**p) for p in predictions],
    )
