"""POST /v1/jobs refuses bad submissions with a clear 4xx, through the real job manager.

The manager is never started (the app's lifespan does not run), so an accepted job stays
queued and no worker trains; every check a submit makes is the real one.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.jobs.manager import JobManager
from fnbundle.settings import Settings

from tests.conftest import REPO, REVIEWS

pytestmark = pytest.mark.unit


@pytest.fixture
def client(tmp_path):
    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "jobs", data_roots=[REPO])
    app = create_app(settings, job_manager=JobManager(settings))
    return TestClient(app)  # no `with`: the manager is never started


def submit_raw(client: TestClient, body: str):
    return client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})


def body(**fields) -> str:
    """A valid submit (the test reviews on the builtin base) with ``fields`` spliced in raw
    JSON, so that numbers such as 1e999 reach the server as written."""
    params = {"data": str(REVIEWS), "name": "tickets", **fields.pop("params", {})}
    parts = ['"task": "train_classifier"', f'"params": {json.dumps(params)}']
    parts += [f'"{key}": {value}' for key, value in fields.items()]
    return "{" + ", ".join(parts) + "}"


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"budget_usd": "1e999"}, "budget_usd", "finite"),
        ({"budget_usd": "Infinity"}, "budget_usd", "finite"),
        ({"budget_usd": "NaN"}, "budget_usd", "finite"),
        ({"timeout_s": "1e999"}, "timeout_s", "finite"),
        ({"timeout_s": "1e-9"}, "timeout_s", "greater than or equal to 1"),
        ({"timeout_s": "1e9"}, "timeout_s", "less than or equal to 604800"),
        ({"gpu": '"../../x"'}, "gpu", "H100"),
        ({"gpu": '"AMPERE_80; rm -rf /"'}, "gpu", "AMPERE_80"),
        ({"params": {"seed": 2**64}}, "params.seed", "less than or equal to 4294967295"),
        ({"params": {"seed": -1}}, "params.seed", "greater than or equal to 0"),
        ({"params": {"data": "d/" * 2500}}, "params.data", "at most 1024 characters"),
        ({"params": {"base": "x" * 5000}}, "params.base", "at most 1024 characters"),
        ({"params": {"weight_decay": 1e308 * 10}}, "params.weight_decay", "less than"),
        ({"params": {"patience": 10**30}}, "params.patience", "less than"),
        ({"params": {"text_column": ""}}, "params.text_column", "at least 1"),
    ],
)
def test_out_of_range_submissions_are_422_naming_the_field(client, fields, field, says):
    r = submit_raw(client, body(**fields))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "validation_error" and error["field"] == field
    assert says in error["message"]
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was queued


def test_a_path_too_long_for_the_file_system_is_a_400_naming_data(client):
    r = submit_raw(client, body(params={"data": str(REPO / ("a" * 300 + ".csv"))}))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "data" and "too long" in r.json()["error"]["message"]


def test_a_catalogue_gpu_is_accepted_in_any_case_and_stored_as_the_catalogue_spells_it(client):
    r = submit_raw(client, body(gpu='"h100"', timeout_s="600", budget_usd="0.5"))
    assert r.status_code == 202, r.text
    job = client.get(r.headers["location"]).json()
    assert (job["gpu"], job["timeout_s"], job["budget_usd"]) == ("H100", 600, 0.5)
