"""The ``predict`` serving task as the registry lists it: ``POST /v1/predict``.

Key rules: rows are checked against the server's limits and encoded before any inference
(a missing, unknown or unreadable column is a 422 naming ``rows.<i>.<column>``; an unseen
category is ignored by the model's one-hot encoding; null is a missing value); concurrent
requests share graph runs in the host's batcher, one item per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from fnbundle.errors import InvalidRequest
from fnbundle.settings import Settings
from fnbundle.store import Artifact
from fnbundle.tasks.base import Batch, ServingTask
from fnbundle.tasks.predict import TASK
from fnbundle.tasks.predict.model import TabularModel
from fnbundle.tasks.predict.schema import (
    PredictRequest,
    PredictResponse,
    RowPrediction,
    check_limits,
)


class PredictTask(ServingTask[PredictRequest, PredictResponse, TabularModel]):
    slug: ClassVar[str] = TASK
    route: ClassVar[str] = "/v1/predict"
    summary: ClassVar[str] = "Predict from table rows with a tabular model from the store."
    noun: ClassVar[str] = "a tabular model"
    request_model = PredictRequest
    response_model = PredictResponse
    example: ClassVar[dict[str, Any]] = {
        "model": "churn",
        "rows": [
            {
                "signup_date": "2023-05-02",
                "plan": "pro",
                "country": "US",
                "seats": 4,
                "monthly_spend": "$160.00",
                "last_login_days": 3,
                "support_tickets": 0,
                "autopay": "yes",
                "nps": 9,
                "feedback": None,
            }
        ],
    }

    def default_backend(self, settings: Settings) -> str:
        return "onnx"

    def backend(self, request: PredictRequest, settings: Settings) -> str:
        return "onnx"

    def check_limits(self, request: PredictRequest, settings: Settings) -> None:
        check_limits(request, settings)

    def describe(self, artifact: Artifact) -> dict[str, Any]:
        m = artifact.manifest
        return {
            "problem": m.get("problem"),
            "target": (m.get("target") or {}).get("column"),
            "classes": m.get("classes") or None,
            "features": [{"name": f["name"], "kind": f["kind"]} for f in m.get("features", [])],
            "model": m.get("model"),
            "leaderboard": [
                {
                    "model": c["model"],
                    **{k: v for k, v in c["metrics"].items() if isinstance(v, int | float)},
                }
                for c in m.get("leaderboard") or []
            ],
            "pictures": m.get("pictures") or [],  # GET /v1/models/{id}/files/<picture>
        }

    def pick_backend(self, artifact: Artifact, requested: str) -> str:
        if requested not in ("onnx", "auto"):
            raise InvalidRequest(
                f"Tabular models serve with onnx, not {requested!r}.", field="backend"
            )
        return "onnx"

    def files(self, artifact: Artifact, backend: str) -> list[str]:
        return TabularModel.files_for(artifact, backend)

    def load(self, artifact: Artifact, backend: str, settings: Settings) -> TabularModel:
        return TabularModel.load(artifact, backend, settings)

    def batch_fn(self, model: TabularModel) -> Callable[[list[Any]], np.ndarray]:
        return model.run

    async def run(
        self, model: TabularModel, request: PredictRequest, batch: Batch | None, settings: Settings
    ) -> PredictResponse:
        items = model.encode(request.as_rows())
        out = await batch.submit(items) if batch else model.run(items)
        return _response(model, out)

    def run_sync(
        self, model: TabularModel, request: PredictRequest, settings: Settings
    ) -> PredictResponse:
        return _response(model, model.run(model.encode(request.as_rows())))


def _response(model: TabularModel, out: np.ndarray) -> PredictResponse:
    return PredictResponse(
        model=model.model_id,
        task=model.problem,
        predictions=[RowPrediction(**p) for p in model.format(out)],
    )
