"""Training jobs over real HTTP: what a frontend sees when it submits and follows a job (cancel
and retry on every runtime: tests/contract/test_job_contract.py).

A real gateway (`fnbundle serve` on 127.0.0.1) with the real job manager, training the tiny
random-init BERT in worker processes; the client is plain httpx reading the event stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, REVIEWS
from tests.e2e.conftest import gateway

pytestmark = pytest.mark.e2e

JOB_WAIT_S = 300  # seconds a tiny job may take on a busy 2-core machine (worker start included)


def train_params(tiny_base: Path, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "data": str(REVIEWS),
        "name": name,
        "base": str(tiny_base),
        "epochs": 1,
        "learning_rate": 1e-3,
        "freeze_embeddings": False,  # random-init vectors have to learn too
        "export_onnx": False,
        **overrides,
    }


def follow(url: str, job_id: str, headers: dict[str, str] | None = None) -> Iterator[dict]:
    """The job's event stream as (id, event, parsed data) dicts, pings skipped."""
    with httpx.stream(
        "GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=JOB_WAIT_S
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                yield {
                    "id": fields["id"],
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            fields = {}


@pytest.fixture(scope="module")
def jobs_url(tiny_base, tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("jobs-http")
    with gateway(
        root / "store",
        FNB_DATA_ROOTS=f"{REPO},{tiny_base.parent}",
        FNB_JOBS_DIR=str(root / "jobs"),
    ) as url:
        yield url


def test_submit_follow_and_serve_the_trained_model(jobs_url, tiny_base):
    body = {
        "task": "train_classifier",
        "params": train_params(tiny_base, "job-tiny"),
        "idempotency_key": "frontend-click-1",
    }
    r = httpx.post(f"{jobs_url}/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{job_id}"
    again = httpx.post(f"{jobs_url}/v1/jobs", json=body)  # a double click
    assert again.status_code == 200 and again.json()["id"] == job_id

    events = list(follow(jobs_url, job_id))
    seqs = [int(e["id"]) for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert all(e["data"]["seq"] == int(e["id"]) and e["data"]["type"] == e["event"] for e in events)
    states = [e["data"]["data"]["status"] for e in events if e["event"] == "state"]
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded"
    assert events[-1]["event"] == "state"  # the stream ends with the terminal state
    steps = [e["data"]["data"] for e in events if e["event"] == "step"]
    assert steps and [s["step"] for s in steps] == sorted({s["step"] for s in steps})
    assert steps[-1]["step"] == steps[-1]["total_steps"]
    for key in ("total_steps", "epoch", "loss", "eta_s", "cost_usd"):
        assert key in steps[0]

    job = httpx.get(f"{jobs_url}{r.headers['location']}").json()
    assert job["status"] == "succeeded" and job["model_id"].startswith("job-tiny-")
    assert job["progress"]["step"] == steps[-1]["step"]
    classified = httpx.post(
        f"{jobs_url}/v1/classify", json={"model": "job-tiny", "texts": ["Great value."]}, timeout=60
    )
    assert classified.status_code == 200 and classified.json()["model"] == job["model_id"]

    # A reconnecting client gets exactly what it missed, by ?after= or by Last-Event-ID.
    tail = [e["id"] for e in follow(jobs_url, job_id, headers={"Last-Event-ID": str(seqs[-3])})]
    assert tail == [str(s) for s in seqs[-2:]]
    after = httpx.get(f"{jobs_url}/v1/jobs/{job_id}/events?after={seqs[-1]}", timeout=30)
    assert after.status_code == 200 and "event:" not in after.text

    listed = httpx.get(f"{jobs_url}/v1/jobs", params={"status": "succeeded"}).json()["jobs"]
    assert job_id in [j["id"] for j in listed]
    assert httpx.post(f"{jobs_url}/v1/jobs/{job_id}/cancel").status_code == 409


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"name": "x"}, "params.data"),
        ({"data": str(REVIEWS), "name": "x", "epochs": 0}, "params.epochs"),
        ({"data": str(REVIEWS), "name": "Bad Name"}, "params.name"),
    ],
)
def test_bad_params_are_422_naming_the_field(jobs_url, params, field):
    r = httpx.post(f"{jobs_url}/v1/jobs", json={"task": "train_classifier", "params": params})
    assert r.status_code == 422 and r.json()["error"]["field"] == field


def test_unknown_and_malformed_ids(jobs_url):
    for path in ("/v1/jobs/job-20260101000000-0000abcd", "/v1/jobs/job';--/events"):
        r = httpx.get(f"{jobs_url}{path}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
