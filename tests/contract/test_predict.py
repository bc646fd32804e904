"""``predict`` on every runtime: the gateway, Modal's ``.local()`` and the RunPod handler
(called as a function and run as the SDK's ``--test_input`` worker) answer each fixture of
:data:`~tests.contract.cases.PREDICT_CASES` with the same body.

The store holds a logistic regression trained on ``data/churn.csv`` (a few seconds).
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.settings import Settings

from tests.conftest import REPO
from tests.contract.cases import PREDICT_CASES, PREDICT_MODEL, Case, normalize
from tests.contract.test_runpod import decode, load_handler, run_test_input

pytestmark = [
    pytest.mark.contract,
    pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning"),
]


def check_predict_body(case: Case, body: dict[str, Any]) -> None:
    if case.status == 200:
        assert "error" not in body and body["task"] == "classification", body
        rows = case.payload.get("rows") or [0] * len(next(iter(case.payload["columns"].values())))
        assert len(body["predictions"]) == len(rows)
        for p in body["predictions"]:
            assert p["prediction"] in p["probabilities"] and set(p["probabilities"]) == {
                "no",
                "yes",
            }
        return
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == case.error_type, body
    if case.field is not None:
        assert body["error"].get("field") == case.field, body


@pytest.fixture(scope="module")
def predict_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fnbundle.tasks.train_tabular.params import TrainTabularParams
    from fnbundle.training.tabular import train_tabular

    root = tmp_path_factory.mktemp("predict-store")
    settings = Settings(store=root, data_roots=[REPO / "data"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        train_tabular(
            TrainTabularParams(
                data=str(REPO / "data" / "churn.csv"),
                name=PREDICT_MODEL,
                model="logistic_regression",
                cv_folds=2,
            ),
            settings,
        )
    return root


@pytest.fixture
def predict_env(predict_store: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FNB_STORE", str(predict_store))
    monkeypatch.setenv("FNB_PRELOAD", PREDICT_MODEL)
    for name in ("FNB_API_KEYS", "FNB_MAX_ROWS", "FNB_MAX_BODY_BYTES", "FNB_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return Settings()


@pytest.fixture
def gateway_bodies(predict_env: Settings) -> dict[str, tuple[int, dict[str, Any]]]:
    with TestClient(create_app(predict_env, jobs=False)) as client:
        answers = {}
        for case in PREDICT_CASES:
            response = client.post("/v1/predict", json=case.payload)
            answers[case.name] = (response.status_code, response.json())
    return answers


def test_gateway_answers_each_case_as_declared(gateway_bodies) -> None:
    for case in PREDICT_CASES:
        status, body = gateway_bodies[case.name]
        assert status == case.status, (case.name, body)
        check_predict_body(case, body)
    good = gateway_bodies["good"][1]["predictions"]
    assert good[1]["probabilities"]["yes"] > good[0]["probabilities"]["yes"]  # free churns more


def test_the_models_list_describes_the_features(predict_env: Settings) -> None:
    with TestClient(create_app(predict_env, jobs=False)) as client:
        (model,) = client.get("/v1/models").json()["data"]
    assert model["task"] == "predict" and model["problem"] == "classification"
    assert model["target"] == "churned" and model["classes"] == ["no", "yes"]
    assert {"name": "plan", "kind": "categorical"} in model["features"]


def test_runpod_handler_answers_like_the_gateway(gateway_bodies, predict_env) -> None:
    module = load_handler("predict")
    module.setup(predict_env)

    async def every_job() -> list[dict[str, Any]]:  # one loop, as the RunPod worker has
        return [await module.handler({"id": c.name, "input": c.payload}) for c in PREDICT_CASES]

    for case, output in zip(PREDICT_CASES, asyncio.run(every_job()), strict=True):
        body = decode(output)
        check_predict_body(case, body)
        assert normalize(body) == normalize(gateway_bodies[case.name][1]), case.name


@pytest.fixture
def modal_predictor(predict_env: Settings) -> Iterator[Any]:
    sys.path.insert(0, str(REPO))  # functions/ is a folder of app files, imported by path
    try:
        from functions.predict import Predictor

        yield Predictor()
    finally:
        sys.path.remove(str(REPO))


@pytest.mark.parametrize("case", PREDICT_CASES, ids=lambda c: c.name)
def test_modal_method_answers_like_the_gateway(case: Case, gateway_bodies, modal_predictor) -> None:
    body = modal_predictor.predict.local(case.payload)
    check_predict_body(case, body)
    assert normalize(body) == normalize(gateway_bodies[case.name][1])


def test_modal_web_endpoint_is_the_gateway(gateway_bodies, modal_predictor) -> None:
    with TestClient(modal_predictor.web.local()) as client:
        for case in PREDICT_CASES:
            response = client.post("/v1/predict", json=case.payload)
            assert response.status_code == case.status, case.name
            assert normalize(response.json()) == normalize(gateway_bodies[case.name][1])


@pytest.mark.parametrize("name", ["good", "unknown_model"])
def test_runpod_test_input_worker_answers_like_the_gateway(
    name: str, gateway_bodies, predict_store: Path
) -> None:
    case = next(c for c in PREDICT_CASES if c.name == name)
    env = {**os.environ, "FNB_STORE": str(predict_store), "FNB_PRELOAD": PREDICT_MODEL}
    _, body = run_test_input(case.payload, "predict", env)
    assert normalize(decode(body)) == normalize(gateway_bodies[case.name][1])
