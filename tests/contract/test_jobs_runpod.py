"""Training jobs on RunPod, offline: :class:`RunPodJobs` behind the gateway's ``/v1/jobs``
routes, the training handler's job mode, and both together.

RunPod's cloud is the one thing faked, at its HTTP API (``httpx.MockTransport``): scripted
answers pin the status mapping, stream paging and error handling; :class:`FakeRunPod` runs
the real handler for each ``/run`` (a thread per job, as a worker would) and cancels it the
way the SDK does (by cancelling the handler's task). The SDK's own dev server
(``--rp_serve_api``) runs a tiny job end to end.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.errors import QueueFull
from fnbundle.jobs.runpod_backend import RunPodJobs, RunPodUnavailable
from fnbundle.jobs.runpod_run import STEP_EVENTS_EVERY_S
from fnbundle.jobs.schema import JobStatus, JobSubmit
from fnbundle.settings import Settings
from fnbundle.store import Store

from tests.conftest import REPO
from tests.contract.conftest import JOB_WAIT_S, follow, states, steps
from tests.contract.test_runpod import load_handler
from tests.contract.test_runpod_server import dev_server, fnb_worker_env

pytestmark = pytest.mark.contract

BASE = "https://api.runpod.ai/v2/ep-test"
KEY = "rp-secret"


class WorkerLost(BaseException):
    """What a job sees when its worker's machine goes away: not an Exception."""


def params(data: Path, base: Path, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "data": str(data),
        "name": name,
        "base": str(base),
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "freeze_embeddings": False,  # random-init vectors have to learn too
        "export_onnx": False,
        **overrides,
    }


# --- scripted RunPod answers --------------------------------------------------------------
class Script:
    """RunPod's API as a script: ``(method, path suffix) -> answers`` (the last one repeats)."""

    def __init__(self, routes: dict[tuple[str, str], list[Any]]):
        self.routes = routes
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v2/ep-test")
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, path, body))
        for (method, suffix), answers in self.routes.items():
            if request.method == method and path.startswith(suffix):
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if isinstance(answer, Exception):
                    raise answer
                return (
                    answer
                    if isinstance(answer, httpx.Response)
                    else httpx.Response(200, json=answer)
                )
        return httpx.Response(404, json={"error": "not found"})

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.calls if method is None or m == method]


def event(seq: int, type_: str, **data: Any) -> dict[str, Any]:
    return {"seq": seq, "type": type_, "at": "2026-11-01T12:00:00+00:00", "data": data}


@pytest.fixture
def scripted(tmp_path: Path, small_csv: Path, tiny_base: Path):
    """``make(routes) -> (RunPodJobs, Script)`` with /run answering a RunPod id."""
    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "client")
    made: list[RunPodJobs] = []

    def make(routes: dict[tuple[str, str], list[Any]]) -> tuple[RunPodJobs, Script]:
        script = Script({("POST", "/run"): [{"id": "rp-1", "status": "IN_QUEUE"}], **routes})
        jobs = RunPodJobs(settings, "ep-test", KEY, transport=httpx.MockTransport(script))
        made.append(jobs)
        return jobs, script

    yield make, JobSubmit(task="train_classifier", params=params(small_csv, tiny_base, "rp"))
    for jobs in made:
        jobs.stop()


@pytest.mark.parametrize(
    ("runpod", "ours"),
    [
        ("IN_QUEUE", "queued"),
        ("IN_PROGRESS", "running"),
        ("COMPLETED", "succeeded"),
        ("FAILED", "failed"),
        ("CANCELLED", "cancelled"),
        ("TIMED_OUT", "timed_out"),
    ],
)
def test_runpod_statuses_map_to_job_statuses(scripted, runpod, ours):
    make, submit = scripted
    jobs, script = make({("GET", "/status/rp-1"): [{"id": "rp-1", "status": runpod}]})
    job, created = jobs.submit(submit)
    assert created and job.status == JobStatus.queued

    assert jobs.get(job.id).status == ours
    [(_, _, body)] = [c for c in script.calls if c[1] == "/run"]
    assert body["input"]["job_id"] == job.id and body["input"]["job"]["task"] == "train_classifier"
    if ours in ("failed", "cancelled", "timed_out", "succeeded"):  # the stream ends with it
        last = jobs.events(job.id)[-1]
        assert (last.type, last.data["status"]) == ("state", ours)


def test_completed_is_what_the_jobs_own_last_state_says(scripted):
    make, submit = scripted
    output = [
        event(2, "state", status="running", attempt=1),
        event(3, "state", status="stopped_budget", reason="stopped_budget"),
    ]
    jobs, _ = make({("GET", "/status/rp-1"): [{"status": "COMPLETED", "output": output}]})
    job = jobs.submit(submit)[0]
    assert jobs.get(job.id).status == JobStatus.stopped_budget
    failed = {
        "status": "FAILED",
        "error": json.dumps({"type": "invalid_dataset", "message": "No rows."}),
    }
    jobs2, _ = make({("GET", "/status/rp-1"): [failed]})
    other = jobs2.submit(submit.model_copy(update={"idempotency_key": "other"}))[0]
    assert jobs2.get(other.id).error == {"type": "invalid_dataset", "message": "No rows."}


def test_stream_pages_are_followed_until_the_terminal_state(scripted):
    make, submit = scripted
    pages = [
        {
            "status": "IN_PROGRESS",
            "stream": [
                {"output": event(2, "state", status="running", attempt=1)},
                {"output": event(3, "step", step=1, total_steps=2, loss=0.7, cost_usd=0.0)},
            ],
        },
        {"status": "IN_PROGRESS", "stream": []},
        {
            "status": "COMPLETED",
            "stream": [
                {"output": event(4, "step", step=2, total_steps=2, loss=0.5, cost_usd=0.0)},
                {"output": event(5, "state", status="succeeded", model_id="rp-abc")},
            ],
        },
    ]
    jobs, script = make({("GET", "/stream/rp-1"): pages})
    job = jobs.submit(submit)[0]

    async def follow() -> list[int]:
        return [e.seq async for e in jobs.follow(job.id, poll_s=0.01)]

    assert asyncio.run(follow()) == [1, 2, 3, 4, 5]
    assert script.paths("GET").count("/stream/rp-1") == 3
    done = jobs.get(job.id)  # answered from the ledger: RunPod is not asked again
    assert done.status == JobStatus.succeeded and done.model_id == "rp-abc"
    assert done.progress.step == 2 and done.progress.fraction == 1.0
    assert script.paths("GET").count("/status/rp-1") == 0
    assert [e.seq for e in jobs.events(job.id, after=3)] == [4, 5]


def test_a_dev_server_405_switches_reads_to_post(scripted):
    make, submit = scripted
    jobs, script = make(
        {
            ("GET", "/status/"): [httpx.Response(405, json={"detail": "Method Not Allowed"})],
            ("POST", "/status/"): [{"status": "IN_PROGRESS"}],
        }
    )
    job = jobs.submit(submit)[0]
    assert jobs.get(job.id).status == JobStatus.running
    assert jobs.get(job.id).status == JobStatus.running
    assert [m for m, p, _ in script.calls if p.startswith("/status")] == ["GET", "POST", "POST"]


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (httpx.Response(401, json={"error": "Unauthorized"}), RunPodUnavailable, "API key"),
        (httpx.Response(404, text="404 page not found"), RunPodUnavailable, "endpoint id"),
        (
            httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
            QueueFull,
            "rate-limiting",
        ),
        (httpx.Response(500, text="oops"), RunPodUnavailable, "HTTP 500"),
        (httpx.ConnectError("connection refused"), RunPodUnavailable, "Could not reach RunPod"),
    ],
    ids=["401", "404", "429", "500", "network"],
)
def test_runpod_failures_are_clear_errors(scripted, answer, error, words):
    make, submit = scripted
    jobs, script = make({("POST", "/run"): [answer, {"id": "rp-2"}]})
    keyed = submit.model_copy(update={"idempotency_key": "click-1"})
    with pytest.raises(error) as caught:
        jobs.submit(keyed)
    assert words in caught.value.message
    if error is QueueFull:
        assert caught.value.status == 429 and caught.value.retry_after == 7
    else:
        assert caught.value.status == 502 and caught.value.type == "upstream_error"
    assert jobs.list() == []  # nothing half-submitted stays behind
    job, created = jobs.submit(keyed)  # the same key tries again
    assert created and jobs.submit(keyed) == (job, False)
    assert script.paths("POST").count("/run") == 2


def test_a_job_runs_on_the_endpoint_of_its_tasks_hardware_class(tmp_path, small_csv, tiny_base):
    from fnbundle.tasks import REGISTRY

    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "client")
    submit = JobSubmit(
        task="train_classifier",
        params=params(small_csv, tiny_base, "rp"),
        idempotency_key="routed",
    )
    hardware = REGISTRY.training["train_classifier"].hardware
    other = "cpu" if hardware == "gpu" else "gpu"
    script = Script({("POST", "/run"): [{"id": "rp-1", "status": "IN_QUEUE"}]})
    lacking = RunPodJobs(settings, {other: "ep-other"}, KEY, transport=httpx.MockTransport(script))
    with pytest.raises(RunPodUnavailable, match=f"no RunPod endpoint for {hardware} jobs"):
        lacking.submit(submit)
    assert lacking.list() == [] and script.calls == []  # forgotten: the key may try again
    lacking.stop()

    jobs = RunPodJobs(
        settings,
        {hardware: "ep-test", other: "ep-other"},
        KEY,
        transport=httpx.MockTransport(script),
    )
    job, created = jobs.submit(submit)
    assert created and job.status == JobStatus.queued
    assert [(m, p) for m, p, _ in script.calls] == [("POST", "/run")]  # on /v2/ep-test
    jobs.stop()


def test_the_gateway_answers_runpod_failures_with_its_error_shape(scripted, tmp_path):
    make, submit = scripted
    jobs, _ = make({("POST", "/run"): [httpx.Response(429, headers={"Retry-After": "9"})]})
    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "client")
    with TestClient(create_app(settings, job_manager=jobs)) as client:
        r = client.post("/v1/jobs", json=submit.model_dump(mode="json"))
        assert r.status_code == 429 and r.headers["retry-after"] == "9"
        assert r.json()["error"]["type"] == "queue_full"
        bad = client.post(
            "/v1/jobs", json={"task": "train_classifier", "params": {"data": "x.csv"}}
        )
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "params.name"


def test_cancel_and_retry_follow_the_managers_rules(scripted):
    make, submit = scripted
    jobs, script = make(
        {
            ("GET", "/status/rp-1"): [{"status": "IN_PROGRESS"}, {"status": "CANCELLED"}],
            ("POST", "/cancel/rp-1"): [{"id": "rp-1", "status": "CANCELLED"}],
        }
    )
    job = jobs.submit(submit)[0]
    asked = jobs.cancel(job.id)  # running: asked to stop, as on every backend
    assert asked.status == JobStatus.running and asked.cancel_requested
    assert jobs.ledger.events(job.id)[-1].data == {"level": "info", "message": "cancel requested"}
    cancelled = jobs.get(job.id)  # RunPod now says it stopped
    assert cancelled.status == JobStatus.cancelled and cancelled.cancel_requested
    assert jobs.cancel(job.id).status == JobStatus.cancelled  # again: answered as is
    assert script.paths("POST").count("/cancel/rp-1") == 1
    assert jobs.events(job.id)[-1].data == {"status": "cancelled", "reason": "cancelled"}
    with pytest.raises(Exception, match="only a failed or timed-out job") as caught:
        jobs.retry(job.id)
    assert caught.value.status == 409


def test_cancel_of_a_queued_job_is_final_at_once(scripted):
    make, submit = scripted
    jobs, _ = make(
        {
            ("GET", "/status/rp-1"): [{"status": "IN_QUEUE"}],
            ("POST", "/cancel/rp-1"): [{"id": "rp-1", "status": "CANCELLED"}],
        }
    )
    job = jobs.submit(submit)[0]
    cancelled = jobs.cancel(job.id)
    assert cancelled.status == JobStatus.cancelled and cancelled.finished_at is not None
    assert [e.data.get("status") for e in jobs.ledger.events(job.id)] == ["queued", "cancelled"]


# --- the real handler behind a fake RunPod ------------------------------------------------
class FakeRunPod:
    """RunPod's job API for one endpoint, running the real handler for every /run."""

    def __init__(self, module: Any):
        self.module = module
        self.jobs: dict[str, dict[str, Any]] = {}
        self.inputs: list[dict[str, Any]] = []
        self.lost: set[str] = set()  # runs whose worker went away
        self.hold = False  # True: new runs wait IN_QUEUE until release()
        self.held: dict[str, threading.Thread] = {}
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"error": "Unauthorized"})
        _, _, op, *rest = request.url.path.strip("/").split("/")
        if op == "run":
            return httpx.Response(200, json=self.run(json.loads(request.content)["input"]))
        job = self.jobs.get(rest[0]) if rest else None
        if job is None:
            return httpx.Response(404, text="404 page not found")
        with self.lock:
            if op == "stream":
                new, job["delivered"] = job["outputs"][job["delivered"] :], len(job["outputs"])
                answer = {"status": job["status"], "stream": [{"output": o} for o in new]}
                if job.get("error"):
                    answer["error"] = job["error"]
                return httpx.Response(200, json=answer)
            if op == "status":
                answer = {"id": rest[0], "status": job["status"]}
                if job["status"] == "COMPLETED":
                    answer["output"] = list(job["outputs"])
                if job.get("error"):
                    answer["error"] = job["error"]
                return httpx.Response(200, json=answer)
        if op == "cancel":
            if self.held.pop(rest[0], None) is not None:  # still in RunPod's queue
                job["status"] = "CANCELLED"
            else:
                job["loop"].call_soon_threadsafe(job["task"].cancel)
                job["thread"].join(30)
            return httpx.Response(200, json={"id": rest[0], "status": job["status"]})
        return httpx.Response(404, text="404 page not found")

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        rp_id = f"rp-{len(self.jobs) + 1}"
        self.inputs.append(payload)
        job: dict[str, Any] = {"status": "IN_QUEUE", "outputs": [], "delivered": 0}
        self.jobs[rp_id] = job
        ready = threading.Event()

        def work() -> None:
            async def consume() -> None:
                async for output in self.module.handler({"id": rp_id, "input": payload}):
                    with self.lock:
                        job["outputs"].append(output)
                        job["status"] = "IN_PROGRESS"

            loop = asyncio.new_event_loop()
            job["loop"], job["task"] = loop, loop.create_task(consume())
            ready.set()
            try:
                loop.run_until_complete(job["task"])
                final = "FAILED" if rp_id in self.lost else "COMPLETED"
            except asyncio.CancelledError:
                final = "CANCELLED"
            finally:
                loop.close()
            with self.lock:
                job["status"] = final
                if final == "FAILED":
                    job["error"] = "worker lost: the machine went away"

        job["thread"] = threading.Thread(target=work, name=rp_id, daemon=True)
        if self.hold:
            self.held[rp_id] = job["thread"]
            return {"id": rp_id, "status": "IN_QUEUE"}
        job["thread"].start()
        ready.wait()
        return {"id": rp_id, "status": "IN_QUEUE"}

    def release(self) -> None:
        """Start the held runs that were not cancelled meanwhile."""
        self.hold = False
        held, self.held = self.held, {}
        for thread in held.values():
            thread.start()

    def join(self) -> None:
        for rp_id, job in self.jobs.items():
            if rp_id not in self.held and job["thread"].ident is not None:
                job["thread"].join(JOB_WAIT_S)
        for thread in threading.enumerate():  # the handlers' training threads
            if thread.name.startswith("train-rp-"):
                thread.join(JOB_WAIT_S)
                assert not thread.is_alive(), f"{thread.name} still trains"


@pytest.fixture
def runpod(tmp_path: Path, small_csv: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch):
    """The gateway app over RunPodJobs, whose RunPod runs the real training handler."""
    module = load_handler("train_classifier")
    worker = Settings(
        store=tmp_path / "store",
        data_roots=[small_csv.parent, tiny_base.parent],
        jobs_dir=tmp_path / "volume" / "fnbundle" / "jobs",  # the network volume's job folders
        jobs_checkpoint_every=3,  # steps: several checkpoints per job
    )
    module.setup(worker)
    fake = FakeRunPod(module)
    gateway = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "gateway", preload=[])
    jobs = RunPodJobs(gateway, "ep-test", KEY, transport=httpx.MockTransport(fake))
    with TestClient(create_app(gateway, job_manager=jobs)) as client:
        yield client, fake, worker
        fake.join()


def test_submit_follow_and_publish_on_runpod(runpod, tiny_base, monkeypatch):
    import runpod as sdk

    client, fake, worker = runpod
    # The worker believes it runs on RunPod; the SDK's progress post is recorded instead.
    sent: list[dict[str, Any]] = []
    monkeypatch.setenv("RUNPOD_WEBHOOK_POST_OUTPUT", "http://127.0.0.1:9/unused")
    monkeypatch.setattr(sdk.serverless, "progress_update", lambda _job, e: sent.append(e))
    body = {
        "task": "train_classifier",
        "params": params(Path("small.csv"), tiny_base, "rp-job"),  # relative: on the volume
        "idempotency_key": "k1",
    }
    started = time.monotonic()
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    again = client.post("/v1/jobs", json=body)
    assert again.status_code == 200 and again.json()["id"] == job_id
    assert [i["job_id"] for i in fake.inputs] == [job_id]  # one /run

    events = follow(client, job_id)
    elapsed_s = time.monotonic() - started
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert states(events) == ["queued", "running", "succeeded"] and events[-1]["type"] == "state"
    done = steps(events)
    assert done == sorted(set(done)) and done[0] == 1  # thinned, never backwards
    checkpoints = [e["data"]["step"] for e in events if e["type"] == "checkpoint"]
    assert checkpoints and set(checkpoints) <= set(done)  # each checkpoint's step is shown
    # One step event per STEP_EVENTS_EVERY_S, plus the last one before each other event.
    assert len(done) <= 1 + (len(events) - len(done)) + elapsed_s / STEP_EVENTS_EVERY_S
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["progress"]["step"] == done[-1] == job["progress"]["total_steps"]
    assert Store(worker.store_root).resolve("rp-job").id == job["model_id"]
    assert 0 <= job["metrics"]["accuracy"] <= 1
    record = json.loads((worker.jobs_root / job_id / "job.json").read_text())
    assert record["status"] == "succeeded" and record["model_id"] == job["model_id"]
    assert record["params"]["data"] == str(worker.data_roots[0] / "small.csv")
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job_id]
    # RunPod's /status showed the progress: every state and epoch, steps no faster than allowed
    assert [e["data"]["status"] for e in sent if e["type"] == "state"] == ["running", "succeeded"]
    assert [e["seq"] for e in sent if e["type"] == "epoch"] == [
        e["seq"] for e in events if e["type"] == "epoch"
    ]
    step_updates = [e for e in sent if e["type"] == "step"]
    assert 1 <= len(step_updates) < len(done)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_lost_worker_fails_the_job_and_a_retry_resumes_from_the_volume(
    runpod, small_csv, tiny_base, monkeypatch
):
    from fnbundle.jobs import runpod_run

    client, fake, worker = runpod
    lost: list[int] = []

    def checkpoint_then_lose_the_machine(store: Any, step: int) -> None:
        if not lost:  # the first checkpoint is on the volume; then the machine goes
            lost.append(step)
            fake.lost.add(f"rp-{len(fake.jobs)}")
            raise WorkerLost

    monkeypatch.setattr(runpod_run.VolumeStore, "checkpointed", checkpoint_then_lose_the_machine)
    job_id = client.post(
        "/v1/jobs",
        json={"task": "train_classifier", "params": params(small_csv, tiny_base, "rp-resume")},
    ).json()["id"]
    first = follow(client, job_id)
    assert states(first)[-1] == "failed"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "worker_failed"

    r = client.post(f"/v1/jobs/{job_id}/retry")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    # The gateway wrote the retry's queued event; the new run's events come after it.
    assert fake.inputs[-1]["retry"] is True and fake.inputs[-1]["after_seq"] == first[-1]["seq"] + 1
    events = follow(client, job_id, None)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # one seq, both runs
    # The volume still says running (the worker died): the new run requeues it, then claims it.
    assert states(events) == ["queued", "running", "failed", "queued", "running", "succeeded"]
    done = steps(events)
    assert done == sorted(set(done)) and done[-1] == job["progress"]["total_steps"]
    logs = [e["data"]["message"] for e in events if e["type"] == "log"]
    assert any(f"resuming from step {lost[0]}" in m for m in logs), logs
    assert f"resumed from step {lost[0]}" in logs  # the trainer loaded the checkpoint
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert Store(worker.store_root).resolve("rp-resume").id == job["model_id"]


@pytest.mark.parametrize(
    ("payload", "error_type", "field"),
    [
        (
            {
                "job": {"task": "train_classifier", "params": {"name": "x"}},
                "job_id": "job-20260101000000-0000abcd",
            },
            "validation_error",
            "params.data",
        ),
        (
            {
                "job": {"task": "train_classifier", "params": {"data": "a.csv", "name": "x"}},
                "job_id": "../../etc",
            },
            "invalid_request",
            "job_id",
        ),
        (
            {"job": {"task": "nope", "params": {}}, "job_id": "job-20260101000000-0000abcd"},
            "validation_error",
            "task",
        ),
    ],
    ids=["bad_params", "bad_job_id", "bad_task"],
)
def test_a_bad_job_input_is_one_error_output(payload, error_type, field, tmp_path):
    module = load_handler("train_classifier")
    module.setup(Settings(store=tmp_path / "store", jobs_dir=tmp_path / "jobs"))

    async def collect() -> list[dict[str, Any]]:
        return [e async for e in module.handler({"id": "rp-bad", "input": payload})]

    [output] = asyncio.run(collect())
    error = json.loads(output["error"])
    assert (error["type"], error.get("field")) == (error_type, field)
    assert not (tmp_path / "jobs").exists()  # nothing written for a refused job


def test_a_gpu_worker_without_cuda_fails_instead_of_training_on_its_cpu(
    tmp_path, small_csv, tiny_base, monkeypatch
):
    import torch

    module = load_handler("train_classifier")
    worker = Settings(
        store=tmp_path / "store",
        data_roots=[small_csv.parent, tiny_base.parent],
        jobs_dir=tmp_path / "jobs",
    )
    module.setup(worker)
    # On a RunPod worker of the GPU endpoint whose host driver is too old for torch's CUDA:
    # the platform's marker and the hardware are the boundaries faked here.
    monkeypatch.setenv("RUNPOD_POD_ID", "pod-old-driver")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    job_id = "job-20260101000000-0000abcd"
    job = {"task": "train_classifier", "params": params(small_csv, tiny_base, "rp-gpu")}
    payload = {"job": job, "job_id": job_id}

    async def collect() -> list[dict[str, Any]]:
        return [e async for e in module.handler({"id": "rp-gpu", "input": payload})]

    events = asyncio.run(collect())

    assert not [e for e in events if e.get("type") in ("start", "step", "checkpoint")]
    assert states(events) == ["running", "failed"]
    data = events[-1]["data"]
    assert data["reason"] == "unfit_worker"
    error = data["error"]
    record = json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())
    assert record["status"] == "failed" and record["error"] == error
    assert not (tmp_path / "jobs" / job_id / "checkpoints").exists()
    assert error["type"] == "training_failed"
    assert error["message"].startswith("No usable CUDA device on this GPU worker: ")
    assert "not trained on the CPU" in error["message"]
    assert not Store(worker.store_root).list()

    monkeypatch.delenv("RUNPOD_POD_ID")  # the same handler run locally trains on the CPU
    payload = {"job": job, "job_id": "job-20260101000000-0000abce"}
    assert states(asyncio.run(collect())) == ["running", "succeeded"]


# --- the SDK's dev server -----------------------------------------------------------------
def test_a_job_end_to_end_through_the_sdk_dev_server(tmp_path, small_csv, tiny_base):
    """The gateway configured by settings alone (FNB_JOBS_RUNPOD_ENDPOINT, _URL, the key)
    in front of the SDK's dev server running the real training handler."""
    env = fnb_worker_env(
        FNB_STORE=str(tmp_path / "store"),
        FNB_DATA_ROOTS=f"{small_csv.parent},{tiny_base.parent}",
        FNB_JOBS_DIR=str(tmp_path / "volume-jobs"),
    )
    with dev_server("train_classifier", env, tmp_path / "server.log") as base:
        settings = Settings(
            store=tmp_path / "store",
            jobs_dir=tmp_path / "client",
            preload=[],
            jobs_runpod_endpoint="local",
            jobs_runpod_url=base,
            runpod_api_key="dev",
        )
        app = create_app(settings)
        jobs = app.state.jobs
        assert isinstance(jobs, RunPodJobs)
        assert jobs.runpod.endpoint("train_classifier").base == base
        jobs.runpod.stream_timeout_s = JOB_WAIT_S  # the dev server may hold /stream while it trains
        body = {
            "task": "train_classifier",
            "params": params(small_csv, tiny_base, "rp-dev", epochs=1),
        }
        with TestClient(app) as client:
            submitted = client.post("/v1/jobs", json=body)
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            events = follow(client, job_id)
            done = client.get(f"/v1/jobs/{job_id}").json()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert states(events) == ["queued", "running", "succeeded"]
    assert steps(events) and steps(events) == sorted(steps(events))
    assert jobs.read_method == "POST"  # the dev server's /stream and /status take POST only
    assert done["status"] == "succeeded"
    assert Store(tmp_path / "store").resolve("rp-dev").id == done["model_id"]


def test_the_backend_imports_neither_the_training_stack_nor_the_sdk():
    probe = (
        "import json, sys\n"
        "import fnbundle.jobs.runpod_backend, fnbundle.jobs.runpod_run\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'runpod') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_tabular_worker_runs_a_job_on_its_dev_server_and_publishes(tmp_path):
    """``python handlers/train_tabular.py --rp_serve_api``: the CPU training worker as the
    SDK serves it, a job in, its events and the published model out, on the volume's
    layout (the SDK's ``--test_input`` runs no streaming handler)."""
    from tests.contract.test_runpod import worker_env
    from tests.contract.test_runpod_server import dev_server

    job_id = "job-20260101000000-0000beef"
    params = {"data": str(REPO / "data" / "churn.csv"), "name": "churn", "cv_folds": 2,
              "models": ["logistic_regression", "naive_bayes"]}  # fmt: skip
    env = worker_env() | {
        "FNB_STORE": str(tmp_path / "store"),
        "FNB_DATA_ROOTS": str(REPO / "data"),
        "FNB_JOBS_DIR": str(tmp_path / "volume" / "fnbundle" / "jobs"),
    }
    payload = {"job": {"task": "train_tabular", "params": params}, "job_id": job_id}
    with dev_server("train_tabular", env, tmp_path / "worker.log") as base:
        answer = httpx.post(f"{base}/runsync", json={"input": payload}, timeout=300)
    assert answer.status_code == 200, answer.text
    events = answer.json()["output"]
    assert states(events) == ["running", "succeeded"]
    models = [e["data"] for e in events if e.get("type") == "model"]
    assert [(m["model"], m["state"]) for m in models] == [
        ("logistic_regression", "training"), ("logistic_regression", "done"),
        ("naive_bayes", "training"), ("naive_bayes", "done"),
    ]  # fmt: skip
    jobs = tmp_path / "volume" / "fnbundle" / "jobs"
    record = json.loads((jobs / job_id / "job.json").read_text())
    assert record["status"] == "succeeded"
    assert Store(tmp_path / "store").resolve("churn").id == record["model_id"]
