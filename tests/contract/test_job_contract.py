"""One job contract, three runtimes: the local gateway's worker processes, Modal's jobs app
(``JobsApi().web.local()`` with Modal's spawn faked) and the gateway over RunPod
(``RunPodJobs`` with RunPod's API faked, running the real training worker). The same
requests get the same answers: submit and idempotency, gap-free events ending in the
terminal state, the published model, 404s and 409s, cancel of a queued and of a running
job, retry of a timed-out job, and a budget that stops a job.

Each runtime can hold new work back (:meth:`Runtime.held`: the local scheduler starts none,
Modal's and RunPod's fakes queue the call), so a job stays queued as long as a test needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.settings import Settings
from fnbundle.store import Store

from tests.contract.conftest import follow, states, steps
from tests.contract.test_jobs_modal import modal  # noqa: F401 - a fixture
from tests.contract.test_jobs_runpod import runpod  # noqa: F401 - a fixture

pytestmark = [
    pytest.mark.contract,
    pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning"),
]

BACKENDS = ["local", "modal", "runpod"]


@pytest.fixture
def local(tmp_path: Path, small_csv: Path, tiny_base: Path) -> Iterator[tuple[TestClient, Path]]:
    settings = Settings(
        store=tmp_path / "store",
        data_roots=[small_csv.parent, tiny_base.parent],
        jobs_dir=tmp_path / "jobs",
        jobs_checkpoint_every=3,
        jobs_cancel_grace_s=1.0,  # seconds: a worker still starting up is signalled soon
        preload=[],
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings.store_root


@dataclass
class Runtime:
    client: TestClient
    store: Path  # the model store its jobs publish to
    hold: Callable[[bool], None]  # True: new work waits queued; False: it starts

    @contextmanager
    def held(self) -> Iterator[None]:
        self.hold(True)
        try:
            yield
        finally:
            self.hold(False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Runtime:
    """One runtime's ``/v1/jobs``."""
    made = request.getfixturevalue(request.param)
    if request.param == "modal":
        fake = made.fake

        def hold_modal(on: bool) -> None:
            if on:
                fake.hold = True
            else:
                fake.release()

        return Runtime(made.client, made.store, hold_modal)
    if request.param == "runpod":
        client, fake_rp, worker = made

        def hold_runpod(on: bool) -> None:
            if on:
                fake_rp.hold = True
            else:
                fake_rp.release()

        return Runtime(client, worker.store_root, hold_runpod)
    client, store = made
    workers = client.app.state.jobs.workers
    running = workers.max_running

    def hold_local(on: bool) -> None:
        workers.max_running = 0 if on else running
        workers.wake()

    return Runtime(client, store, hold_local)


def params(data: Path, tiny_base: Path, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "data": str(data),  # inside the data roots on every runtime
        "name": name,
        "base": str(tiny_base),
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "freeze_embeddings": False,
        "export_onnx": False,
        **overrides,
    }


def test_submit_is_idempotent_and_a_job_ends_published(backend, small_csv, tiny_base):
    client, store = backend.client, backend.store
    body = {
        "task": "train_classifier",
        "params": params(small_csv, tiny_base, "same"),
        "idempotency_key": "k",
    }

    first = client.post("/v1/jobs", json=body)
    again = client.post("/v1/jobs", json=body)

    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    assert first.headers["location"] == f"/v1/jobs/{job_id}"
    assert set(first.json()) == {"id", "status", "estimate"}
    assert again.status_code == 200 and again.json()["id"] == job_id
    events = follow(client, job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # gap-free
    assert states(events) == ["queued", "running", "succeeded"]
    assert events[-1]["type"] == "state"
    done = steps(events)  # every step, or on RunPod one a second and each epoch's last
    assert done == sorted(set(done)) and done[0] >= 1
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert done[-1] == job["progress"]["step"] == job["progress"]["total_steps"]
    assert Store(store).resolve("same").id == job["model_id"]
    for action in ("cancel", "retry"):  # a finished job moves no more
        refused = client.post(f"/v1/jobs/{job_id}/{action}")
        assert refused.status_code == 409 and refused.json()["error"]["type"] == "conflict"


def test_unknown_jobs_are_404s_everywhere(backend):
    client = backend.client
    unknown = "job-20260101000000-00000000"
    for method, path in [
        ("GET", f"/v1/jobs/{unknown}"),
        ("GET", f"/v1/jobs/{unknown}/events"),
        ("POST", f"/v1/jobs/{unknown}/cancel"),
        ("POST", f"/v1/jobs/{unknown}/retry"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", (path, r.text)


def test_cancel_of_a_running_job_answers_running_then_ends_cancelled(backend, small_csv, tiny_base):
    client, store = backend.client, backend.store
    body = {
        "task": "train_classifier",
        "params": params(small_csv, tiny_base, "long", epochs=50, patience=0),
    }
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    answers: list[Any] = []

    def cancel_at_the_first_step(event: dict[str, Any]) -> None:
        if event["type"] == "step" and not answers:
            answers.append(client.post(f"/v1/jobs/{job_id}/cancel"))

    events = follow(client, job_id, cancel_at_the_first_step)

    # The work has not stopped when the cancel is answered: running, with the request noted.
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["status"] == "running"
    assert answers[0].json()["cancel_requested"] is True
    assert states(events) == ["queued", "running", "cancelled"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # as is
    assert not Store(store).list()  # nothing published


def test_cancel_of_a_queued_job_is_final_at_once_and_it_never_runs(backend, small_csv, tiny_base):
    client, store = backend.client, backend.store
    body = {"task": "train_classifier", "params": params(small_csv, tiny_base, "never")}
    with backend.held():
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel")

    assert cancelled.status_code == 200, cancelled.text
    job = cancelled.json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert job["cancel_requested"] is False and job["attempts"] == 0
    events = follow(client, job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert states(events) == ["queued", "cancelled"]  # never "running"
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # as is
    refused = client.post(f"/v1/jobs/{job_id}/retry")
    assert refused.status_code == 409 and refused.json()["error"]["field"] == "status"
    assert client.get(f"/v1/jobs/{job_id}").json()["attempts"] == 0
    assert not Store(store).list()


def test_a_timed_out_job_is_retried_as_a_second_attempt(backend, small_csv, tiny_base):
    client = backend.client
    body = {
        "task": "train_classifier",
        "params": params(small_csv, tiny_base, "late", epochs=50, patience=0),
        "timeout_s": 1,  # second: the job cannot finish
    }
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    first = follow(client, job_id)
    assert states(first) == ["queued", "running", "timed_out"]
    timed_out = client.get(f"/v1/jobs/{job_id}").json()
    assert timed_out["error"]["type"] == "timed_out" and timed_out["attempts"] == 1

    retried = client.post(f"/v1/jobs/{job_id}/retry")

    assert retried.status_code == 202, retried.text
    assert retried.headers["location"] == f"/v1/jobs/{job_id}"
    assert retried.json()["status"] == "queued" and retried.json()["error"] is None
    events = follow(client, job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # one seq, both runs
    assert states(events) == ["queued", "running", "timed_out", "queued", "running", "timed_out"]
    assert client.get(f"/v1/jobs/{job_id}").json()["attempts"] == 2
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_a_budget_stops_the_job_and_it_cannot_be_retried(backend, small_csv, tiny_base):
    client, store = backend.client, backend.store
    body = {
        "task": "train_classifier",
        "params": params(small_csv, tiny_base, "dear", epochs=50, patience=0),
        "budget_usd": 0.000001,  # USD: spent within the first steps
    }
    job_id = client.post("/v1/jobs", json=body).json()["id"]

    events = follow(client, job_id)

    assert states(events) == ["queued", "running", "stopped_budget"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "stopped_budget" and job["cost_usd"] >= body["budget_usd"]
    assert job["error"]["type"] == "stopped_budget" and job["model_id"] is None
    # Warned at each threshold on the way (here all at once: the first update crosses them).
    warnings = [e["data"]["fraction"] for e in events if e["type"] == "cost_usd"]
    assert warnings == [0.5, 0.75, 0.9, 1.0]
    for action in ("retry", "cancel"):
        refused = client.post(f"/v1/jobs/{job_id}/{action}")
        assert refused.status_code == 409, (action, refused.text)
    assert not Store(store).list()
