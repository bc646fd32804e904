"""The /v1/jobs routes: status codes, error bodies and the event stream's framing.

The real job manager answers, over a temporary database; it starts no worker
(``max_running=0``), so each job stays in the state a test puts it in.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.api import jobs as jobs_api
from fnbundle.jobs.manager import JobManager
from fnbundle.jobs.schema import Job, JobEvent, JobStatus, new_job_id
from fnbundle.settings import Settings

from tests.conftest import REPO, REVIEWS

pytestmark = pytest.mark.unit

KEY = "s3cret-key-0123456789"  # the gateway refuses keys under 16 characters

PARAMS = {"data": str(REVIEWS), "name": "tickets", "epochs": 1}
MAX_QUEUED = 4


class Spy:
    """Records which job ids and list queries reached the real manager."""

    def __init__(self, manager: JobManager, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asked: list[str] = []
        self.listed: list[dict[str, Any]] = []
        for name in ("get", "cancel", "retry"):
            real = getattr(manager, name)

            def asked(job_id: str, _real: Any = real) -> Any:
                self.asked.append(job_id)
                return _real(job_id)

            monkeypatch.setattr(manager, name, asked)
        real_list = manager.list

        def listed(**query: Any) -> list[Job]:
            self.listed.append(query)
            return real_list(**query)

        monkeypatch.setattr(manager, "list", listed)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        store=tmp_path / "store",
        jobs_dir=tmp_path / "jobs",
        data_roots=[REPO],
        jobs_max_queued=MAX_QUEUED,
    )


@pytest.fixture
def manager(settings) -> JobManager:
    """The real manager over a temporary database; it starts no worker (max_running=0), so
    a job stays where a test puts it."""
    return JobManager(settings, max_running=0)


@pytest.fixture
def spy(manager, monkeypatch) -> Spy:
    return Spy(manager, monkeypatch)


@pytest.fixture
def client(settings, manager):
    with TestClient(create_app(settings, job_manager=manager)) as c:
        yield c


def add(manager: JobManager, status: JobStatus, events: Sequence[tuple[str, Any]] = ()) -> Job:
    """A job in ``status``, reached by allowed moves, with ``events`` after its ``queued``."""
    db = manager.db
    row, _ = db.create(
        Job(
            id=new_job_id(),
            task="train_classifier",
            status=JobStatus.queued,
            params=PARAMS,
            created_at=datetime.now(UTC),
        )
    )
    if status != JobStatus.queued:
        assert db.claim_next(row.id) is not None
        if status != JobStatus.running:
            db.transition(row.id, status)
    if events:
        db.update(row.id, events=list(events))
    return db.get(row.id).public()


def error(response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_
    assert body["error"]["message"] and "Traceback" not in response.text
    return body["error"]


def sse(text: str) -> list[dict[str, str]]:
    """Parse an event-stream body into its events (comments kept as ``{"comment": ...}``)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


# What a succeeded job's events are, after its queued, running and succeeded state events.
STEPS = [
    ("step", {"step": 1, "total_steps": 2, "epoch": 0.5, "loss": 0.7, "eta_s": 3.0, "cost_usd": 0}),
    ("checkpoint", {"step": 1, "epoch": 0.5}),
    ("step", {"step": 2, "total_steps": 2, "epoch": 1.0, "loss": 0.5, "eta_s": 0.0, "cost_usd": 0}),
]
FINISHED = [
    ("state", {"status": "queued"}),
    ("state", {"status": "running", "attempt": 1}),
    ("state", {"status": "succeeded"}),
    *STEPS,
]


# --- submit --------------------------------------------------------------------------
def test_submit_answers_202_with_location_and_same_key_answers_200(client):
    body = {"task": "train_classifier", "params": PARAMS, "idempotency_key": "k-1"}
    first = client.post("/v1/jobs", json=body)
    assert first.status_code == 202, first.text
    accepted = first.json()
    assert set(accepted) == {"id", "status", "estimate"} and accepted["status"] == "queued"
    assert first.headers["location"] == f"/v1/jobs/{accepted['id']}"

    again = client.post("/v1/jobs", json=body)
    assert again.status_code == 200 and again.json() == accepted
    assert again.headers["location"] == first.headers["location"]
    assert client.get(first.headers["location"]).json()["idempotency_key"] == "k-1"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"params": PARAMS}, "task"),
        ({"task": "train_llm", "params": PARAMS}, "task"),
        ({"task": "train_classifier"}, "params"),
        ({"task": "train_classifier", "params": PARAMS, "budget_usd": -1}, "budget_usd"),
        ({"task": "train_classifier", "params": PARAMS, "webhook_url": "nope"}, "webhook_url"),
        ({"task": "train_classifier", "params": PARAMS, "priority": 1}, "priority"),
        ({"task": "train_classifier", "params": {"name": "x"}}, "params.data"),  # the manager's
    ],
)
def test_bad_submissions_are_422_naming_the_field(client, payload, field):
    assert error(client.post("/v1/jobs", json=payload), 422, "validation_error")["field"] == field


def test_malformed_json_is_400(client):
    r = client.post(
        "/v1/jobs", content=b'{"task": "train_', headers={"content-type": "application/json"}
    )
    error(r, 400, "invalid_json")


def test_full_queue_is_429_with_retry_after(client, manager):
    for _ in range(MAX_QUEUED):
        add(manager, JobStatus.queued)
    r = client.post("/v1/jobs", json={"task": "train_classifier", "params": PARAMS})
    error(r, 429, "queue_full")
    assert r.headers["retry-after"] == "30"


# --- read, cancel, retry -----------------------------------------------------------------
def test_get_cancel_and_retry(client, manager):
    running = add(manager, JobStatus.running)
    got = client.get(f"/v1/jobs/{running.id}")
    assert got.status_code == 200 and Job.model_validate(got.json()) == running

    asked = client.post(f"/v1/jobs/{running.id}/cancel")  # running: asked to stop
    assert asked.status_code == 200, asked.text
    assert asked.json()["status"] == "running" and asked.json()["cancel_requested"] is True
    assert client.post(f"/v1/jobs/{running.id}/cancel").json() == asked.json()  # idempotent
    queued = add(manager, JobStatus.queued)
    cancelled = client.post(f"/v1/jobs/{queued.id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    done = add(manager, JobStatus.succeeded)
    error(client.post(f"/v1/jobs/{done.id}/cancel"), 409, "conflict")
    error(client.post(f"/v1/jobs/{done.id}/retry"), 409, "conflict")

    failed = add(manager, JobStatus.failed)
    retried = client.post(f"/v1/jobs/{failed.id}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert retried.headers["location"] == f"/v1/jobs/{failed.id}"


def test_unknown_job_is_404(client):
    for r in (
        client.get("/v1/jobs/job-20260101000000-0000ffff"),
        client.get("/v1/jobs/job-20260101000000-0000ffff/events"),
        client.post("/v1/jobs/job-20260101000000-0000ffff/cancel"),
        client.post("/v1/jobs/job-20260101000000-0000ffff/retry"),
    ):
        assert error(r, 404, "not_found")["field"] == "id"


@pytest.mark.parametrize(
    "bad_id",
    [
        "job-20260101000000-0000000g",
        "job-20260101000000-00000001;DROP TABLE jobs",
        "job-20260101000000-00000001%00",
        "job-2026010100000-00000001",
        "JOB-20260101000000-00000001",
        "job-20260101000000-0000000\uff11",  # a full-width digit
        "x" * 5000,
        "%2e%2e",
        "job'--",
    ],
)
def test_ids_outside_the_id_format_never_reach_the_manager(client, spy, bad_id):
    for r in (
        client.get(f"/v1/jobs/{bad_id}"),
        client.get(f"/v1/jobs/{bad_id}/events"),
        client.post(f"/v1/jobs/{bad_id}/cancel"),
        client.post(f"/v1/jobs/{bad_id}/retry"),
    ):
        error(r, 404, "not_found")
    assert spy.asked == []


# --- list --------------------------------------------------------------------------------
def test_list_filters_and_pages(client, manager, spy):
    queued = add(manager, JobStatus.queued)
    running = add(manager, JobStatus.running)
    add(manager, JobStatus.succeeded)
    r = client.get("/v1/jobs", params={"status": "running,queued", "limit": 20})
    assert r.status_code == 200
    assert [j["id"] for j in r.json()["jobs"]] == [running.id, queued.id]
    assert spy.listed[-1] == {
        "status": [JobStatus.running, JobStatus.queued],
        "task": None,
        "limit": 20,
        "before": None,
    }

    repeated = client.get("/v1/jobs?status=running&status=queued&task=train_classifier")
    assert len(repeated.json()["jobs"]) == 2 and spy.listed[-1]["task"] == "train_classifier"

    page = client.get("/v1/jobs", params={"limit": 1, "before": running.id}).json()["jobs"]
    assert [j["id"] for j in page] == [queued.id]
    assert client.get("/v1/jobs").json()["jobs"][0]["status"] == "succeeded"
    unknown = client.get("/v1/jobs", params={"before": "job-20000101000000-00000000"})
    assert error(unknown, 404, "not_found")["field"] == "before"
    assert "404" in client.get("/openapi.json").json()["paths"]["/v1/jobs"]["get"]["responses"]
    first_page = client.get("/v1/jobs", params={"before": ""})  # empty: no cursor
    assert first_page.status_code == 200 and len(first_page.json()["jobs"]) == 3


@pytest.mark.parametrize(
    ("query", "status", "type_", "field"),
    [
        ("status=running,sleeping", 422, "validation_error", "status.0"),
        ("before=job;--", 422, "validation_error", "before"),
        ("limit=0", 422, "validation_error", "limit"),
        ("limit=100000", 422, "validation_error", "limit"),
        ("task=train_llm", 422, "validation_error", "task"),
        ("stauts=running", 400, "invalid_request", "stauts"),  # a typo filters nothing
        ("=0.0", 400, "invalid_request", ""),
    ],
)
def test_bad_list_queries(client, spy, query, status, type_, field):
    assert error(client.get(f"/v1/jobs?{query}"), status, type_)["field"] == field
    assert spy.listed == []


# --- events ------------------------------------------------------------------------------
def test_events_stream_replays_every_event_and_ends_at_the_terminal_state(client, manager):
    job = add(manager, JobStatus.succeeded, STEPS)
    r = client.get(f"/v1/jobs/{job.id}/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    events = sse(r.text)
    assert [(e["id"], e["event"]) for e in events] == [
        (str(i), type_) for i, (type_, _) in enumerate(FINISHED, start=1)
    ]
    for event, (type_, data) in zip(events, FINISHED, strict=True):
        parsed = JobEvent.model_validate(json.loads(event["data"]))
        assert parsed.type == type_ and parsed.data == data and str(parsed.seq) == event["id"]


def test_events_resume_after_n_and_last_event_id_wins(client, manager):
    job = add(manager, JobStatus.succeeded, STEPS)
    after = sse(client.get(f"/v1/jobs/{job.id}/events?after=3").text)  # seq 1-3: states
    assert [e["id"] for e in after] == ["4", "5", "6"]
    header = client.get(f"/v1/jobs/{job.id}/events?after=1", headers={"Last-Event-ID": "5"})
    assert [e["id"] for e in sse(header.text)] == ["6"]
    assert sse(client.get(f"/v1/jobs/{job.id}/events?after=6").text) == []


@pytest.mark.parametrize(
    ("query", "headers", "status", "field"),
    [
        ("after=-1", {}, 422, "after"),
        ("after=x", {}, 422, "after"),
        ("", {"Last-Event-ID": "abc"}, 422, "last-event-id"),
        ("", {"Last-Event-ID": "-3"}, 422, "last-event-id"),
    ],
)
def test_bad_resume_points_are_rejected(client, manager, query, headers, status, field):
    job = add(manager, JobStatus.succeeded, STEPS)
    r = client.get(f"/v1/jobs/{job.id}/events?{query}", headers=headers)
    assert r.status_code == status and r.json()["error"]["field"] == field


def test_a_live_stream_is_pinged_and_tails_new_events(client, manager, monkeypatch):
    monkeypatch.setattr(jobs_api, "PING_S", 0.05)
    job = add(manager, JobStatus.running, STEPS[:1])

    def finish_soon() -> None:
        manager.db.transition(job.id, JobStatus.succeeded)

    timer = threading.Timer(0.5, finish_soon)
    timer.start()
    with client.stream("GET", f"/v1/jobs/{job.id}/events") as r:
        text = "".join(r.iter_text())
    timer.join()
    events = sse(text)
    assert any("ping" in e.get("comment", "") for e in events)
    named = [e for e in events if "event" in e]
    assert [e["id"] for e in named] == ["1", "2", "3", "4"]
    assert json.loads(named[-1]["data"])["data"] == {"status": "succeeded"}


# --- guard, lifecycle, docs ----------------------------------------------------------------
def test_every_jobs_route_needs_the_key_when_keys_are_set(settings, manager, spy):
    job = add(manager, JobStatus.succeeded, STEPS)
    keyed = settings.model_copy(update={"api_keys": [KEY]})
    with TestClient(create_app(keyed, job_manager=manager)) as c:
        for method, path in [
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job.id}"),
            ("GET", f"/v1/jobs/{job.id}/events"),
            ("POST", f"/v1/jobs/{job.id}/cancel"),
            ("POST", f"/v1/jobs/{job.id}/retry"),
        ]:
            r = c.request(method, path, json={"task": "train_classifier", "params": PARAMS})
            error(r, 401, "unauthorized")
            wrong = c.request(method, path, headers={"Authorization": "Bearer nope"})
            error(wrong, 401, "unauthorized")
        assert spy.asked == [] and spy.listed == []
        ok = c.get(f"/v1/jobs/{job.id}/events", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and len(sse(ok.text)) == len(FINISHED)


def test_the_manager_starts_and_stops_with_the_app(settings, manager):
    app = create_app(settings, job_manager=manager)
    assert manager._thread is None
    with TestClient(app):
        assert manager._thread is not None and manager._thread.is_alive()  # scheduling
    assert manager._thread is None


def test_jobs_can_be_left_out(settings, manager):
    app = create_app(settings, job_manager=manager, jobs=False)
    with TestClient(app) as c:
        error(c.get("/v1/jobs"), 404, "not_found")
        assert not any(p.startswith("/v1/jobs") for p in c.get("/openapi.json").json()["paths"])
    assert manager._thread is None


def test_openapi_documents_the_job_models(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events"):
        assert path in paths
    schemas = spec["components"]["schemas"]
    assert {"JobSubmit", "Job", "JobAccepted", "JobEvent", "ErrorBody"} <= set(schemas)
    submit = paths["/v1/jobs"]["post"]["responses"]
    assert {"200", "202", "404", "422", "429", "503"} <= set(submit)
    assert submit["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]
    assert "text/event-stream" in events["200"]["content"]
    assert "application/json" in events["404"]["content"]
