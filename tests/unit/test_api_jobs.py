"""The /v1/jobs routes: status codes, error bodies and the event stream's framing.

The job manager is the one thing faked here: an in-memory stand-in with the real manager's
interface, so these tests pin what the HTTP layer does with its answers and errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.api import jobs as jobs_api
from fnbundle.errors import Conflict, NotFound, QueueFull, ValidationFailed
from fnbundle.jobs.schema import RETRYABLE, TERMINAL, Job, JobEvent, JobStatus, JobSubmit
from fnbundle.settings import Settings

pytestmark = pytest.mark.unit

PARAMS = {"data": "data/reviews.csv", "name": "tickets"}


class FakeJobManager:
    """In-memory jobs with the manager's interface; records every id it was asked about."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.log: dict[str, list[JobEvent]] = {}
        self.asked: list[str] = []
        self.listed: list[dict[str, Any]] = []
        self.queue_full = False
        self.started = self.stopped = False
        self.tail_delay_s = 0.0  # follow() waits this long before its terminal event

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def add(self, status: JobStatus, events: list[tuple[str, dict[str, Any]]] = ()) -> Job:
        job = Job(
            id=f"job-20260101000000-{len(self.jobs) + 1:08x}",
            task="train_classifier",
            status=status,
            params=PARAMS,
            created_at=datetime.now(UTC),
        )
        self.jobs[job.id] = job
        self.log[job.id] = []
        for type_, data in events:
            self.emit(job.id, type_, data)
        return job

    def emit(self, job_id: str, type_: str, data: dict[str, Any]) -> None:
        seq = len(self.log[job_id]) + 1
        self.log[job_id].append(
            JobEvent(seq=seq, type=type_, at=datetime.now(UTC), data=data)  # type: ignore[arg-type]
        )

    def submit(self, req: JobSubmit) -> tuple[Job, bool]:
        if "data" not in req.params:
            raise ValidationFailed("params.data: Field required", field="params.data")
        for job in self.jobs.values():
            if req.idempotency_key and job.idempotency_key == req.idempotency_key:
                return job, False
        if self.queue_full:
            raise QueueFull("The queue is full.", retry_after=30)
        job = self.add(JobStatus.queued, [("state", {"status": "queued"})])
        job.idempotency_key = req.idempotency_key
        job.estimate = {"cost_usd": 0.0, "seconds": 60}
        return job, True

    def get(self, job_id: str) -> Job:
        self.asked.append(job_id)
        if job_id not in self.jobs:
            raise NotFound(f"No job {job_id!r}.", field="id")
        return self.jobs[job_id]

    def list(
        self,
        *,
        status: list[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Job]:
        self.listed.append({"status": status, "task": task, "limit": limit, "before": before})
        jobs = sorted(self.jobs.values(), key=lambda j: j.id, reverse=True)
        if before is not None:
            jobs = [j for j in jobs if j.id < before]
        return [j for j in jobs if status is None or j.status in status][:limit]

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in TERMINAL and job.status != JobStatus.cancelled:
            raise Conflict(f"Job {job_id} already {job.status.value}.")
        job.status = JobStatus.cancelled
        return job

    def retry(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status not in RETRYABLE:
            raise Conflict(
                f"Only a failed or timed-out job can be retried; {job_id} is {job.status.value}."
            )
        job.status = JobStatus.queued
        return job

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        self.get(job_id)
        return [e for e in self.log[job_id] if e.seq > after][:limit]

    async def follow(
        self, job_id: str, after: int = 0, poll_s: float = 0.2
    ) -> AsyncIterator[JobEvent]:
        for event in self.events(job_id, after):
            yield event
        if self.tail_delay_s:
            await asyncio.sleep(self.tail_delay_s)
            self.jobs[job_id].status = JobStatus.succeeded
            self.emit(job_id, "state", {"status": "succeeded"})
            yield self.log[job_id][-1]


@pytest.fixture
def manager() -> FakeJobManager:
    return FakeJobManager()


@pytest.fixture
def client(tmp_path, manager):
    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "jobs")
    with TestClient(create_app(settings, job_manager=manager)) as c:
        yield c


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


FINISHED = [
    ("state", {"status": "queued"}),
    ("state", {"status": "running"}),
    ("step", {"step": 1, "total_steps": 2, "epoch": 0.5, "loss": 0.7, "eta_s": 3.0, "cost_usd": 0}),
    ("checkpoint", {"step": 1, "epoch": 0.5}),
    ("step", {"step": 2, "total_steps": 2, "epoch": 1.0, "loss": 0.5, "eta_s": 0.0, "cost_usd": 0}),
    ("state", {"status": "succeeded"}),
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
    manager.queue_full = True
    r = client.post("/v1/jobs", json={"task": "train_classifier", "params": PARAMS})
    error(r, 429, "queue_full")
    assert r.headers["retry-after"] == "30"


# --- read, cancel, retry -----------------------------------------------------------------
def test_get_cancel_and_retry(client, manager):
    running = manager.add(JobStatus.running)
    got = client.get(f"/v1/jobs/{running.id}")
    assert got.status_code == 200 and Job.model_validate(got.json()) == running

    cancelled = client.post(f"/v1/jobs/{running.id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{running.id}/cancel").status_code == 200  # idempotent

    done = manager.add(JobStatus.succeeded)
    error(client.post(f"/v1/jobs/{done.id}/cancel"), 409, "conflict")
    error(client.post(f"/v1/jobs/{done.id}/retry"), 409, "conflict")

    failed = manager.add(JobStatus.failed)
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
def test_ids_outside_the_id_format_never_reach_the_manager(client, manager, bad_id):
    for r in (
        client.get(f"/v1/jobs/{bad_id}"),
        client.get(f"/v1/jobs/{bad_id}/events"),
        client.post(f"/v1/jobs/{bad_id}/cancel"),
        client.post(f"/v1/jobs/{bad_id}/retry"),
    ):
        error(r, 404, "not_found")
    assert manager.asked == []


# --- list --------------------------------------------------------------------------------
def test_list_filters_and_pages(client, manager):
    queued = manager.add(JobStatus.queued)
    running = manager.add(JobStatus.running)
    manager.add(JobStatus.succeeded)
    r = client.get("/v1/jobs", params={"status": "running,queued", "limit": 20})
    assert r.status_code == 200
    assert [j["id"] for j in r.json()["jobs"]] == [running.id, queued.id]
    assert manager.listed[-1] == {
        "status": [JobStatus.running, JobStatus.queued],
        "task": None,
        "limit": 20,
        "before": None,
    }

    repeated = client.get("/v1/jobs?status=running&status=queued&task=train_classifier")
    assert len(repeated.json()["jobs"]) == 2 and manager.listed[-1]["task"] == "train_classifier"

    page = client.get("/v1/jobs", params={"limit": 1, "before": running.id}).json()["jobs"]
    assert [j["id"] for j in page] == [queued.id]
    assert client.get("/v1/jobs").json()["jobs"][0]["status"] == "succeeded"


@pytest.mark.parametrize(
    ("query", "status", "type_", "field"),
    [
        ("status=running,sleeping", 400, "invalid_request", "status"),
        ("before=job;--", 400, "invalid_request", "before"),
        ("limit=0", 422, "validation_error", "limit"),
        ("limit=100000", 422, "validation_error", "limit"),
        ("task=train_llm", 422, "validation_error", "task"),
    ],
)
def test_bad_list_queries(client, manager, query, status, type_, field):
    assert error(client.get(f"/v1/jobs?{query}"), status, type_)["field"] == field
    assert manager.listed == []


# --- events ------------------------------------------------------------------------------
def test_events_stream_replays_every_event_and_ends_at_the_terminal_state(client, manager):
    job = manager.add(JobStatus.succeeded, FINISHED)
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
    job = manager.add(JobStatus.succeeded, FINISHED)
    after = sse(client.get(f"/v1/jobs/{job.id}/events?after=3").text)
    assert [e["id"] for e in after] == ["4", "5", "6"]
    header = client.get(f"/v1/jobs/{job.id}/events?after=1", headers={"Last-Event-ID": "5"})
    assert [e["id"] for e in sse(header.text)] == ["6"]
    assert sse(client.get(f"/v1/jobs/{job.id}/events?after=6").text) == []


@pytest.mark.parametrize(
    ("query", "headers", "status", "field"),
    [
        ("after=-1", {}, 422, "after"),
        ("after=x", {}, 422, "after"),
        ("", {"Last-Event-ID": "abc"}, 400, "Last-Event-ID"),
        ("", {"Last-Event-ID": "-3"}, 400, "Last-Event-ID"),
    ],
)
def test_bad_resume_points_are_rejected(client, manager, query, headers, status, field):
    job = manager.add(JobStatus.succeeded, FINISHED)
    r = client.get(f"/v1/jobs/{job.id}/events?{query}", headers=headers)
    assert r.status_code == status and r.json()["error"]["field"] == field


def test_a_live_stream_is_pinged_and_tails_new_events(client, manager, monkeypatch):
    monkeypatch.setattr(jobs_api, "PING_S", 0.05)
    manager.tail_delay_s = 0.5
    job = manager.add(JobStatus.running, FINISHED[:3])
    with client.stream("GET", f"/v1/jobs/{job.id}/events") as r:
        text = "".join(r.iter_text())
    events = sse(text)
    assert any("ping" in e.get("comment", "") for e in events)
    named = [e for e in events if "event" in e]
    assert [e["id"] for e in named] == ["1", "2", "3", "4"]
    assert json.loads(named[-1]["data"])["data"] == {"status": "succeeded"}


# --- guard, lifecycle, docs ----------------------------------------------------------------
def test_every_jobs_route_needs_the_key_when_keys_are_set(tmp_path, manager):
    job = manager.add(JobStatus.succeeded, FINISHED)
    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "jobs", api_keys=["s3cret"])
    with TestClient(create_app(settings, job_manager=manager)) as c:
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
        assert manager.asked == [] and manager.listed == []
        ok = c.get(f"/v1/jobs/{job.id}/events", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(sse(ok.text)) == len(FINISHED)


def test_the_manager_starts_and_stops_with_the_app(tmp_path, manager):
    app = create_app(Settings(store=tmp_path, jobs_dir=tmp_path / "jobs"), job_manager=manager)
    assert not manager.started
    with TestClient(app):
        assert manager.started and not manager.stopped
    assert manager.stopped


def test_jobs_can_be_left_out(tmp_path, manager):
    app = create_app(Settings(store=tmp_path), job_manager=manager, jobs=False)
    with TestClient(app) as c:
        error(c.get("/v1/jobs"), 404, "not_found")
        assert not any(p.startswith("/v1/jobs") for p in c.get("/openapi.json").json()["paths"])
    assert not manager.started


def test_openapi_documents_the_job_models(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events"):
        assert path in paths
    schemas = spec["components"]["schemas"]
    assert {"JobSubmit", "Job", "JobAccepted", "JobEvent", "ErrorBody"} <= set(schemas)
    submit = paths["/v1/jobs"]["post"]["responses"]
    assert {"200", "202", "422", "429"} <= set(submit)
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]
    assert "text/event-stream" in events["200"]["content"]
    assert "application/json" in events["404"]["content"]
