"""Training jobs on Modal, offline: the deployed web endpoint's app (``JobsApi().web.local()``)
answers ``/v1/jobs`` like the local gateway, and ``TrainJobs.train_job`` trains, cancels,
and resumes after a preemption.

Modal's cloud is the one thing faked, at its three calls: ``spawn`` runs
``train_job.local(...)`` in a thread (and runs it again when it was "preempted", as Modal's
retries do), ``FunctionCall.cancel`` only records the call (the Dict's cancel flag must stop
the training by itself) and ``FunctionCall.get(timeout=0)`` reports the thread's state. The
``modal.Dict`` is a plain dict.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fnbundle.endpoints import get_endpoint
from fnbundle.settings import Settings
from fnbundle.store import Store

from tests.conftest import REPO, free_port
from tests.contract.conftest import JOB_WAIT_S, follow, states, steps

pytestmark = [
    pytest.mark.contract,
    pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning"),
]


class Preempted(BaseException):
    """What a container sees when Modal takes its machine away: not an Exception."""


class FakeModal:
    """Modal's spawn / FunctionCall API over threads in this process."""

    def __init__(
        self, function: str = "functions.train_classifier:TrainJobs", prefix: str = "fc-"
    ) -> None:
        self.function = function  # the training class this fake spawns on
        self.prefix = prefix  # of its call ids
        self.threads: dict[str, threading.Thread] = {}
        self.calls: list[tuple[str, str]] = []  # (call id, job id) per spawn
        self.crashed: set[str] = set()  # calls that died without running the function
        self.cancelled: list[str] = []
        self.crash_next = False
        self.hold = False  # True: spawned calls wait (queued) until release()
        self.held: dict[str, threading.Thread] = {}
        self.runs = 0  # train_job executions (a preempted call runs twice)
        self._ids = itertools.count(1)

    def spawn(self, job_id: str, submit: dict[str, Any]) -> str:
        import importlib

        module, cls = self.function.split(":")
        TrainJobs = getattr(importlib.import_module(module), cls)

        call_id = f"{self.prefix}{next(self._ids)}"
        self.calls.append((call_id, job_id))
        if self.crash_next:
            self.crash_next = False
            self.crashed.add(call_id)

        def call() -> None:
            if call_id in self.crashed:
                return
            while True:
                self.runs += 1
                try:
                    TrainJobs().train_job.local(job_id, submit)
                    return
                except Preempted:  # Modal starts the input again in a new container,
                    continue  # whatever the function's retries

        thread = threading.Thread(target=call, name=call_id, daemon=True)
        self.threads[call_id] = thread
        if self.hold:
            self.held[call_id] = thread
        else:
            thread.start()
        return call_id

    def release(self) -> None:
        """Start the held calls that were not cancelled meanwhile."""
        self.hold = False
        held, self.held = self.held, {}
        for thread in held.values():
            thread.start()

    def check(self, call_id: str) -> str:
        if call_id in self.held or self.threads[call_id].is_alive():
            return "pending"
        return "failed" if call_id in self.crashed else "done"

    def cancel(self, call_id: str) -> None:
        self.cancelled.append(call_id)
        if self.held.pop(call_id, None) is not None:  # never started: it never runs
            self.threads.pop(call_id)

    def join(self, timeout: float = JOB_WAIT_S) -> None:
        for thread in list(self.threads.values()):
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} still trains"


@dataclass
class Modal:
    client: TestClient
    fake: FakeModal
    state: dict[str, Any]  # the "modal.Dict"
    commits: list[int]  # one entry per Volume commit
    store: Path
    app: FastAPI  # JobsApi's web app


@pytest.fixture
def modal(
    small_csv: Path, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Modal]:
    """The web endpoint's app over a plain-dict "Dict", with the fake Modal calls."""
    import fnbundle.jobs.modal_backend as backend

    import functions.train_classifier as fn
    import functions.train_tabular as tabular_fn

    monkeypatch.setenv("FNB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("FNB_DATA_ROOTS", f"{small_csv.parent},{tiny_base.parent}")
    monkeypatch.setenv("FNB_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("FNB_JOBS_CHECKPOINT_EVERY", "3")  # steps: several checkpoints per job
    for name in ("FNB_API_KEYS", "FNB_PRELOAD", "FNB_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    fake, state, commits = FakeModal(), {}, []
    monkeypatch.setattr(fn, "job_state", state)
    monkeypatch.setattr(fn, "spawn_job", fake.spawn)
    cpu = FakeModal("functions.train_tabular:TabularJobs", "fc-cpu-")  # the CPU function
    monkeypatch.setattr(fn, "spawn_cpu_job", cpu.spawn)
    monkeypatch.setattr(fn, "commit_volume", lambda: commits.append(1))
    monkeypatch.setattr(tabular_fn, "job_state", state)
    monkeypatch.setattr(tabular_fn, "commit_volume", lambda: commits.append(1))
    fake.cpu = cpu  # type: ignore[attr-defined]

    def of(call_id: str) -> FakeModal:  # Modal's FunctionCall API knows every function's
        return cpu if call_id.startswith(cpu.prefix) else fake

    monkeypatch.setattr(backend, "cancel_call", lambda call_id: of(call_id).cancel(call_id))
    monkeypatch.setattr(backend, "call_state", lambda call_id: of(call_id).check(call_id))
    app = fn.JobsApi().web.local()
    with TestClient(app) as client:
        yield Modal(client, fake, state, commits, tmp_path / "store", app)
        fake.join()


def params(tiny_base: Path, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "data": "small.csv",  # relative: under the first data root, as on the Volume
        "name": name,
        "base": str(tiny_base),
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "freeze_embeddings": False,  # random-init vectors have to learn too
        "export_onnx": False,
        **overrides,
    }


def test_submit_follow_and_publish(modal, tiny_base):
    client, fake = modal.client, modal.fake
    body = {
        "task": "train_classifier",
        "params": params(tiny_base, "modal-job"),
        "idempotency_key": "k1",
    }

    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert r.json()["estimate"]["gpu"] == get_endpoint("train_classifier").modal.gpu
    again = client.post("/v1/jobs", json=body)  # a double click: the same job, no second spawn
    assert again.status_code == 200 and again.json()["id"] == job_id
    assert [job for _, job in fake.calls] == [job_id]

    events = follow(client, job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert states(events) == ["queued", "running", "succeeded"]
    assert events[-1]["type"] == "state"
    done = steps(events)
    assert done == list(range(1, done[-1] + 1))
    checkpoints = [e["data"]["step"] for e in events if e["type"] == "checkpoint"]
    assert checkpoints and len(modal.commits) >= len(checkpoints) + 1  # each, and the outcome

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["progress"]["step"] == done[-1] == job["progress"]["total_steps"]
    assert Store(modal.store).resolve("modal-job").id == job["model_id"]
    assert [j["id"] for j in client.get("/v1/jobs?status=succeeded").json()["jobs"]] == [job_id]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 409
    tail = client.get(f"/v1/jobs/{job_id}/events?after={events[-2]['seq']}")
    assert tail.status_code == 200 and tail.text.count("event:") == 1  # replay from any point


def test_a_preempted_container_resumes_from_the_committed_checkpoint(modal, tiny_base, monkeypatch):
    import functions.train_classifier as fn

    client, fake = modal.client, modal.fake
    preempted: list[int] = []

    def commit_then_lose_the_machine() -> None:
        modal.commits.append(1)
        if not preempted:  # the first checkpoint is safe on the Volume; then the machine goes
            preempted.append(len(modal.commits))
            raise Preempted

    monkeypatch.setattr(fn, "commit_volume", commit_then_lose_the_machine)
    r = client.post(
        "/v1/jobs", json={"task": "train_classifier", "params": params(tiny_base, "modal-resume")}
    )
    job_id = r.json()["id"]

    events = follow(client, job_id)
    fake.join()
    assert fake.runs == 2 and len(fake.calls) == 1  # one call, run twice
    # The lost container's job goes back to the queue, then the next run claims it.
    assert states(events) == ["queued", "running", "queued", "running", "succeeded"]
    assert [e["data"].get("attempt") for e in events if e["type"] == "state"][1:4] == [1, None, 2]
    done = steps(events)
    assert done == sorted(set(done)) and done == list(range(1, done[-1] + 1))
    logs = [e["data"]["message"] for e in events if e["type"] == "log"]
    assert any("resuming from step 3" in m for m in logs), logs
    assert any(m == "resumed from step 3" for m in logs), logs  # the trainer loaded it
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 2


def test_a_run_at_the_functions_time_limit_ends_timed_out_and_a_retry_resumes(
    modal, tiny_base, monkeypatch
):
    import fnbundle.training.text_classifier  # noqa: F401 - a container imported it already

    import functions.train_classifier as fn

    client, fake = modal.client, modal.fake
    # The function's timeout, shortened: the run must stop itself before Modal kills it.
    # (Its 3 s go to training: the imports above are a container's start, not the run's.)
    monkeypatch.setattr(fn, "EXECUTION_LIMIT_S", 3.0)
    long_job = params(tiny_base, "modal-timeout", epochs=100, patience=0)
    r = client.post("/v1/jobs", json={"task": "train_classifier", "params": long_job})
    job_id = r.json()["id"]

    first = follow(client, job_id)
    fake.join()
    assert states(first) == ["queued", "running", "timed_out"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "timed_out" and job["error"]["type"] == "timed_out"
    assert fake.runs == 1 and len(fake.calls) == 1  # Modal did not run it again from scratch
    saved = job["last_checkpoint_step"]
    assert saved < job["progress"]["total_steps"]

    retried = client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202
    events = follow(client, job_id)
    fake.join()
    assert states(events)[3:] == ["queued", "running", "timed_out"]
    logs = [e["data"]["message"] for e in events if e["type"] == "log"]
    assert f"resumed from step {saved}" in logs  # from the checkpoint, not from step 1
    again = [e["data"]["step"] for e in events[len(first) :] if e["type"] == "step"]
    assert again and min(again) > saved
    assert client.get(f"/v1/jobs/{job_id}").json()["attempts"] == 2


def test_a_gpu_container_without_cuda_fails_the_job_instead_of_training_on_its_cpu(
    modal, tiny_base, monkeypatch
):
    import modal as modal_sdk
    import torch

    import functions.training as training

    client, fake = modal.client, modal.fake
    # In a Modal container of the GPU function, on a host whose driver torch cannot use:
    # where the code runs, the Volume and the hardware are the boundaries faked here.
    monkeypatch.setattr(modal_sdk, "is_local", lambda: False)
    monkeypatch.setattr(  # the Volume the shared training code reloads and commits
        training, "volume", SimpleNamespace(reload=lambda: None, commit=lambda: None)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = client.post(
        "/v1/jobs", json={"task": "train_classifier", "params": params(tiny_base, "modal-gpu")}
    )
    job_id = r.json()["id"]

    events = follow(client, job_id)
    fake.join()
    assert states(events) == ["queued", "running", "failed"]
    assert not [e for e in events if e["type"] in ("step", "checkpoint")]  # never trained
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and fake.runs == 1
    assert job["error"]["type"] == "training_failed"
    assert job["error"]["message"].startswith("No usable CUDA device on this GPU worker: ")
    assert job["model_id"] is None and not modal.store.exists()


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` on a real uvicorn on 127.0.0.1 in a thread, stopped on leaving."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_stream_cut_at_the_web_time_limit_is_resumed_by_the_cli_client(
    modal, tiny_base, monkeypatch
):
    from fnbundle.cli.client import Gateway

    import functions.train_classifier as fn

    # The job cannot finish (its volume commits wait) until the client has reconnected once:
    # however fast the training, the client's first stream is cut while the job runs.
    reconnected = threading.Event()
    monkeypatch.setattr(fn, "commit_volume", lambda: reconnected.wait(JOB_WAIT_S))
    client = modal.client
    modal.app.state.max_stream_s = 1.0  # JobsApi's web timeout, shortened to seconds
    r = client.post(
        "/v1/jobs",
        json={"task": "train_classifier", "params": params(tiny_base, "modal-sse", epochs=4)},
    )
    job_id = r.json()["id"]

    with serve(modal.app) as url:
        with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", timeout=60) as cut:
            lines = list(cut.iter_lines())
        # The server ends the stream itself, before the platform would cut it: no terminal
        # state, a comment and a retry delay, so any SSE client reconnects.
        assert "retry: 1000" in lines and any(line.startswith(":") for line in lines)
        seen = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
        assert "succeeded" not in states(seen)

        gateway = Gateway(url, None)
        connections: list[str] = []

        def connected(req: httpx.Request) -> None:
            connections.append(req.url.path)
            if len(connections) >= 2:
                reconnected.set()

        gateway.http.event_hooks["request"].append(connected)
        events = list(gateway.events(job_id))

    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # each event once
    assert states(events) == ["queued", "running", "succeeded"]
    assert events[-1]["type"] == "state"
    assert len(connections) >= 2  # resumed after at least one cut
    modal.fake.join()


def test_a_call_that_died_fails_the_job_and_retry_spawns_it_again(modal, tiny_base):
    client, fake = modal.client, modal.fake
    fake.crash_next = True
    r = client.post(
        "/v1/jobs",
        json={"task": "train_classifier", "params": params(tiny_base, "modal-retry", epochs=1)},
    )
    job_id = r.json()["id"]
    fake.join()

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "worker_died"
    retried = client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    events = follow(client, job_id)
    assert states(events) == ["queued", "failed", "queued", "running", "succeeded"]
    assert [job for _, job in fake.calls] == [job_id, job_id]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("overrides", "status", "field"),
    [
        ({"epochs": 0}, 422, "params.epochs"),
        ({"name": "Bad Name"}, 422, "params.name"),
        ({"data": "missing.csv"}, 404, "data"),
        ({"data": "../../etc/passwd"}, 400, "data"),
    ],
)
def test_bad_jobs_are_refused_before_anything_is_spawned(
    modal, tiny_base, overrides, status, field
):
    client, fake, state = modal.client, modal.fake, modal.state
    r = client.post(
        "/v1/jobs",
        json={"task": "train_classifier", "params": {**params(tiny_base, "x"), **overrides}},
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    other_gpu = client.post(
        "/v1/jobs",
        json={"task": "train_classifier", "params": params(tiny_base, "x"), "gpu": "H100"},
    )
    assert other_gpu.status_code == 400 and other_gpu.json()["error"]["field"] == "gpu"
    assert fake.calls == [] and state == {}
    assert client.get("/v1/jobs/job-20260101000000-0000abcd").status_code == 404


def test_list_pages_newest_first_and_filters(small_csv, tiny_base, tmp_path):
    from fnbundle.errors import NotFound
    from fnbundle.jobs.modal_backend import ModalJobs
    from fnbundle.jobs.schema import JobStatus, JobSubmit

    settings = Settings(store=tmp_path / "store", data_roots=[small_csv.parent, tiny_base.parent])
    jobs = ModalJobs(settings, spawn=lambda job_id, _submit: f"call-{job_id}", state={})
    ids = [
        jobs.submit(JobSubmit(task="train_classifier", params=params(tiny_base, f"m{i}")))[0].id
        for i in range(4)
    ]
    newest_first = ids[::-1]
    assert [j.id for j in jobs.list()] == newest_first
    assert [j.id for j in jobs.list(limit=2)] == newest_first[:2]
    assert [j.id for j in jobs.list(before=newest_first[1])] == newest_first[2:]
    assert [j.id for j in jobs.list(before=newest_first[1], limit=1)] == newest_first[2:3]
    assert [j.id for j in jobs.list(status=[JobStatus.queued])] == newest_first
    assert jobs.list(status=[JobStatus.running]) == []
    assert jobs.list(task="other") == []
    with pytest.raises(NotFound):
        jobs.list(before="job-20260101000000-00000000")


def test_the_backend_imports_neither_the_training_stack_nor_modal():
    probe = (
        "import json, sys\n"
        "import fnbundle.jobs.modal_backend, fnbundle.jobs.modal_run\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'modal') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_job_is_spawned_by_the_function_of_its_tasks_hardware_class(
    small_csv, tiny_base, tmp_path
):
    from fnbundle.jobs.modal_backend import ModalJobs
    from fnbundle.jobs.schema import JobStatus, JobSubmit
    from fnbundle.tasks import REGISTRY

    settings = Settings(store=tmp_path / "store", data_roots=[small_csv.parent, tiny_base.parent])
    submit = JobSubmit(task="train_classifier", params=params(tiny_base, "routed"))
    hardware = REGISTRY.training["train_classifier"].hardware
    other = "cpu" if hardware == "gpu" else "gpu"
    spawned: list[tuple[str, str]] = []

    def spawner(cls: str) -> Any:
        return lambda job_id, _submit: spawned.append((cls, job_id)) or f"call-{cls}"

    jobs = ModalJobs(settings, spawn={hardware: spawner(hardware), other: spawner(other)}, state={})
    job, created = jobs.submit(submit)
    assert created and job.status == JobStatus.queued
    assert spawned == [(hardware, job.id)] and jobs.state.call_id(job.id) == f"call-{hardware}"

    # A deployment without a function for the task's class says so on the job.
    lacking = ModalJobs(settings, spawn={other: spawner(other)}, state={})
    refused, created = lacking.submit(submit)
    assert created and refused.status == JobStatus.failed
    assert refused.error is not None and refused.error["type"] == "unavailable"
    assert f"no training function for {hardware} jobs" in refused.error["message"]
    assert spawned == [(hardware, job.id)]  # nothing else spawned

    # A task with its own function (LoRA: its GPU, QLoRA's packages) is spawned there, not
    # on its class's; the GPU its estimate prices is that function's.
    routed = ModalJobs(
        settings,
        spawn={hardware: spawner(hardware), "train_classifier": spawner("own")},
        gpu={hardware: "L4", "train_classifier": "L40S"},
        state={},
    )
    job, created = routed.submit(submit.model_copy(update={"idempotency_key": "own"}))
    assert created and spawned[-1] == ("own", job.id)
    assert routed.modal.gpu("train_classifier") == "L40S"


def test_a_tabular_job_runs_on_the_cpu_function_and_an_mlp_on_cuda_on_the_gpu_one(modal, small_csv):
    client, fake = modal.client, modal.fake
    # The table is uploaded to JobsApi, which commits it to the Volume the functions read.
    before = len(modal.commits)
    uploaded = client.post(
        "/v1/datasets?name=churn.csv",
        content=(REPO / "data" / "churn.csv").read_bytes(),
        headers={"content-type": "text/csv"},
    )
    assert uploaded.status_code == 201, uploaded.text
    assert len(modal.commits) == before + 1
    dataset = uploaded.json()["id"]
    assert client.get(f"/v1/datasets/{dataset}/schema").json()["target"]["column"] == "churned"
    params = {"data": dataset, "name": "churn",
              "models": ["logistic_regression", "naive_bayes"], "cv_folds": 2}  # fmt: skip
    r = client.post("/v1/jobs", json={"task": "train_tabular", "params": params})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["estimate"]["gpu"] == "cpu"
    assert client.get(f"/v1/jobs/{job_id}").json()["gpu"] is None  # no GPU for CPU jobs

    events = follow(client, job_id)
    fake.cpu.join()
    assert states(events) == ["queued", "running", "succeeded"]
    assert [e["data"]["state"] for e in events if e["type"] == "model"] == ["training", "done"] * 2
    assert [job for _, job in fake.cpu.calls] == [job_id] and fake.calls == []  # the CPU one
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert Store(modal.store).resolve("churn").id == job["model_id"]
    assert modal.commits  # published into the Volume
    # An MLP asked to train on CUDA is the GPU function's job (its deployment's GPU).
    mlp = {**params, "model": "mlp_classifier", "device": "cuda", "name": "churn-mlp"}
    fake.hold = True  # never run: this machine has no CUDA
    r = client.post("/v1/jobs", json={"task": "train_tabular", "params": mlp})
    assert r.status_code == 202, r.text
    gpu = get_endpoint("train_classifier").modal.gpu
    assert r.json()["estimate"]["gpu"] == gpu
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["gpu"] == gpu
    assert [job for _, job in fake.calls] == [r.json()["id"]]
    assert client.post(f"/v1/jobs/{r.json()['id']}/cancel").status_code == 200
