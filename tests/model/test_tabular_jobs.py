"""Tabular training as a job on the local gateway, as a client meets it over HTTP: the
estimate and the hardware at submit, progress per model and per epoch, the leaderboard in
the finished job, the model served by /v1/predict with its pictures; cancel and budget
stops that publish nothing; bad choices refused at submit naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.tasks.predict.serve import PredictTask

from tests.conftest import REPO

pytestmark = pytest.mark.model

CHURN = REPO / "data" / "churn.csv"
WAIT_S = 600  # seconds a job's event stream may take before the test fails
QUICK = {"models": ["logistic_regression", "naive_bayes", "mlp_classifier"], "cv_folds": 2,
         "epochs": 4}  # fmt: skip


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        store=tmp_path / "store",
        jobs_dir=tmp_path / "jobs",
        data_roots=[REPO / "data"],
        preload=[],
        threads=1,
        jobs_checkpoint_every=5,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def follow(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=WAIT_S) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
    return events


def submit(client: TestClient, **fields: Any) -> dict[str, Any]:
    params = fields.pop("params")
    body = {"task": "train_tabular", "params": {"data": str(CHURN), **params}, **fields}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def test_a_compare_job_reports_each_model_and_publishes_a_served_model(gateway):
    job = submit(gateway, params={"name": "churn", **QUICK})
    estimate = job["estimate"]
    assert estimate["gpu"] == "cpu" and estimate["steps"] == 3  # CPU cores, three models
    assert estimate["seconds"] > 0 and estimate["usd"] > 0
    assert any("no GPU" in a for a in estimate["assumptions"])

    events = follow(gateway, job["id"])
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == [
        "queued", "running", "succeeded",
    ]  # fmt: skip
    models = [e["data"] for e in events if e["type"] == "model"]
    assert [(m["index"], m["state"]) for m in models] == [
        (1, "training"), (1, "done"), (2, "training"), (2, "done"), (3, "training"), (3, "done"),
    ]  # fmt: skip
    assert all("accuracy" in m["scores"] for m in models if m["state"] == "done")
    assert {"epoch", "eval_metric"} <= {e["type"] for e in events}  # the MLP's epochs

    done = gateway.get(f"/v1/jobs/{job['id']}").json()
    assert done["progress"]["fraction"] == 1.0 and done["progress"]["total_steps"] == 3
    metrics = done["metrics"]
    assert metrics["best"] == metrics["leaderboard"][0]["model"]
    assert {m["model"] for m in metrics["leaderboard"]} == set(QUICK["models"])
    assert metrics["accuracy"] > 0.7

    r = gateway.post("/v1/predict", json=PredictTask.example)  # the task's own example
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == done["model_id"]
    assert set(answer["predictions"][0]["probabilities"]) == {"no", "yes"}

    described = gateway.get(f"/v1/models/{done['model_id']}").json()
    assert "pictures/leaderboard.png" in described["pictures"]
    picture = gateway.get(f"/v1/models/{done['model_id']}/files/pictures/leaderboard.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"


def test_cancel_stops_an_mlp_within_a_step_and_publishes_nothing(gateway, tmp_path):
    long = {"name": "long", "model": "mlp_classifier", "epochs": 2000, "patience": 1000}
    job = submit(gateway, params=long)
    events = []
    with gateway.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=WAIT_S) as r:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            events.append(json.loads(line.removeprefix("data:").strip()))
            if events[-1]["type"] == "epoch" and events[-1]["data"]["epoch"] == 2:
                assert gateway.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert [e["data"]["status"] for e in events if e["type"] == "state"][-1] == "cancelled"
    epochs = [e["data"]["epoch"] for e in events if e["type"] == "epoch"]
    assert max(epochs) < 20  # stopped long before its 2000 epochs
    assert Store(tmp_path / "store").list() == []


def test_a_budget_stops_the_job_and_publishes_nothing(gateway, tmp_path):
    job = submit(gateway, params={"name": "cheap", "model": "mlp_classifier", "epochs": 2000,
                                  "patience": 1000}, budget_usd=0.00002)  # fmt: skip
    events = follow(gateway, job["id"])
    assert [e["data"]["status"] for e in events if e["type"] == "state"][-1] == "stopped_budget"
    assert [e for e in events if e["type"] == "cost_usd"]  # the warnings before the stop
    assert Store(tmp_path / "store").list() == []


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"target": "nope"}, "target", "No column 'nope'"),
        ({"model": "ridge"}, "params.model", "ridge does not do classification"),
        ({"model": "forest"}, "params.model", None),
        ({"hidden_layers": [0]}, "params.hidden_layers.0", None),
    ],
)
def test_bad_choices_are_refused_at_submit_naming_the_field(gateway, params, field, words):
    body = {"task": "train_tabular", "params": {"data": str(CHURN), "name": "x", **params}}
    r = gateway.post("/v1/jobs", json=body)
    assert r.status_code in (400, 422), r.text
    error = r.json()["error"]
    assert error.get("field", "").endswith(field) or field in json.dumps(error)
    if words:
        assert words in error["message"]
    assert gateway.get("/v1/jobs").json()["jobs"] == []
