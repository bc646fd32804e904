"""Baseline P1: the naive tabular endpoint, the scikit-learn pipeline's ``predict_proba``
per request.

What a first FastAPI deployment of a scikit-learn model usually looks like: the fitted
pipeline in process, one ``predict_proba`` call on a one-row DataFrame per request, no
batching, no ONNX. It answers ``POST /v1/predict`` in the gateway's shape so the same
client drives both. The pipeline is fitted at start-up on the same table, split, seed and
model as the gateway's artifact (:mod:`fnbundle.training.tabular`), so both serve the same
model without a pickle changing hands.

Run: ``python loadtests/baseline_sklearn.py --data data/churn.csv --model logistic_regression --port 8003``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class PredictBody(BaseModel):
    model: str
    rows: list[dict[str, Any]]


def fitted(data: Path, model: str) -> tuple[Any, Any, list[str]]:
    """The pipeline ``train_tabular`` fits for ``model`` on ``data``, its feature spec, classes."""
    from fnbundle.settings import Settings
    from fnbundle.tasks.train_tabular.params import TrainTabularParams
    from fnbundle.training.tabular import prepare
    from fnbundle.training.tabular_models import estimator, pipeline
    from sklearn.model_selection import train_test_split

    p = TrainTabularParams(data=str(data.resolve()), name="baseline", model=model)
    _, schema, spec, x, y, classes = prepare(p, Settings(data_roots=[data.resolve().parent]))
    assert schema.target is not None
    task = schema.target.task
    x_train, _, y_train, _ = train_test_split(
        x, y, test_size=p.test_split, random_state=p.seed, stratify=y if classes else None
    )
    return (
        pipeline(spec, estimator(model, task, p, len(x_train), n_jobs=-1)).fit(x_train, y_train),
        spec,
        classes,
    )


def build_app(data: Path, model: str, threads: int):  # -> FastAPI
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import pandas as pd
    from fastapi import FastAPI

    pipe, spec, classes = fitted(data, model)
    app = FastAPI(title="baseline: scikit-learn predict_proba per request")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(body: PredictBody) -> dict[str, Any]:
        # A sync route: FastAPI runs it in its thread pool, one predict_proba per request.
        frame = pd.DataFrame({k: v.ravel() for k, v in spec.encode(body.rows).items()})
        proba = pipe.predict_proba(frame)
        return {
            "model": body.model,
            "task": "classification",
            "predictions": [
                {
                    "prediction": classes[int(row.argmax())],
                    "probabilities": dict(zip(classes, row.tolist(), strict=True)),
                }
                for row in proba
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="logistic_regression")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        build_app(args.data, args.model, args.threads),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
