"""Training jobs end to end on this machine: real worker processes training the tiny BERT,
state in SQLite, stops that really stop, outcomes a client can act on.

Every wait polls with a deadline (generous: the test machine is shared); nothing asserts
how fast something happened.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fnbundle.errors import Conflict
from fnbundle.jobs.manager import JobManager
from fnbundle.jobs.schema import TERMINAL, Job, JobEvent, JobStatus, JobSubmit
from fnbundle.settings import Settings
from fnbundle.store import Store

from tests.conftest import REPO, REVIEWS
from tests.model.helpers import nan_base

pytestmark = pytest.mark.model

WAIT_S = 300  # seconds: the longest any wait may take before the test fails
SECRET = "test-webhook-secret"


# --- helpers (also used by test_jobs_kill_resume.py) --------------------------------------


def job_settings(root: Path, tiny_base: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "store": root / "store",
        "jobs_dir": root / "jobs",
        "data_roots": [REPO, tiny_base.parent, root],
        "threads": 1,  # one core per worker: deterministic, and no thread thrash on 2 cores
        "jobs_checkpoint_every": 10,
        "jobs_cancel_grace_s": 30.0,
    }
    return Settings(**(values | overrides))


def params(tiny_base: Path, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "data": str(REVIEWS),
        "name": name,
        "base": str(tiny_base),
        "epochs": 2,
        "learning_rate": 3e-3,
        "freeze_embeddings": False,  # random-init vectors have to learn too
        "export_onnx": False,
    } | overrides


def submit(manager: JobManager, tiny_base: Path, name: str, **fields: Any) -> Job:
    extra = fields.pop("params", {})
    body = {"task": "train_classifier", "params": params(tiny_base, name, **extra)} | fields
    job, created = manager.submit(JobSubmit.model_validate(body))
    assert created
    return job


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = WAIT_S, every: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_terminal(manager: JobManager, job_id: str, timeout: float = WAIT_S) -> Job:
    def done() -> Job | None:
        job = manager.get(job_id)
        return job if job.status in TERMINAL else None

    result: Job = wait_for(f"job {job_id} to finish", done, timeout, every=0.1)
    return result


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a reaped or killed worker is neither)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def worker_pid(manager: JobManager, job_id: str) -> int | None:
    row = manager.db.get(job_id)
    return row.worker_pid if row.status == JobStatus.running else None


def states(events: list[JobEvent]) -> list[str]:
    return [e.data["status"] for e in events if e.type == "state"]


def assert_monotone(events: list[JobEvent]) -> None:
    """seq 1, 2, 3...; step, epoch and checkpoint never go backwards."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for kind, key in (("step", "step"), ("epoch", "epoch"), ("checkpoint", "step")):
        values = [e.data[key] for e in events if e.type == kind]
        assert values == sorted(set(values)), f"{kind} events repeat or go back: {values}"


@pytest.fixture
def make_manager(tmp_path: Path, tiny_base: Path) -> Iterator[Callable[..., JobManager]]:
    managers: list[JobManager] = []

    def make(max_running: int | None = None, **overrides: Any) -> JobManager:
        manager = JobManager(
            job_settings(tmp_path, tiny_base, **overrides), max_running=max_running
        )
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.stop()


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps what it was sent."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def payloads(self) -> list[dict[str, Any]]:
        from fnbundle.webhooks import verify

        out = []
        for headers, body in self.received:
            assert verify(SECRET.encode(), headers["Fnbundle-Signature"], body)
            out.append(json.loads(body))
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


# --- outcomes ------------------------------------------------------------------------------


def test_a_job_trains_publishes_and_reports_every_step(make_manager, tiny_base, receiver):
    manager = make_manager(webhook_secret=SECRET, webhook_allow_private=True)
    manager.start()
    job = submit(manager, tiny_base, "jobok", webhook_url=receiver.url, budget_usd=100)
    assert job.status == JobStatus.queued and job.estimate and job.estimate["steps"] == 88
    done = wait_terminal(manager, job.id)

    assert done.status == JobStatus.succeeded, done.error
    artifact = Store(manager.settings.store_root).resolve("jobok")
    assert done.model_id == artifact.id
    assert done.metrics["accuracy"] == artifact.manifest["metrics"]["accuracy"]
    assert done.progress.step == done.progress.total_steps == 88
    assert done.progress.fraction == 1.0 and done.attempts == 1
    assert 0 < done.cost_usd < 100 and done.error is None

    events = manager.events(job.id)
    assert states(events) == ["queued", "running", "succeeded"]
    assert_monotone(events)
    steps = [e.data for e in events if e.type == "step"]
    assert [s["step"] for s in steps] == list(range(1, 89))
    assert {"loss", "lr", "eta_s", "cost_usd", "total_steps", "epoch"} <= set(steps[0])
    costs = [s["cost_usd"] for s in steps]
    assert costs == sorted(costs) and costs[-1] > 0
    assert [e.data["epoch"] for e in events if e.type == "epoch"] == [1, 2]
    metric_events = [(e.data["epoch"], e.data["name"]) for e in events if e.type == "eval_metric"]
    assert {(1, "accuracy"), (2, "macro_f1")} <= set(metric_events)
    checkpoints = [e.data["step"] for e in events if e.type == "checkpoint"]
    assert checkpoints[:2] == [10, 20] and checkpoints[-1] == 88  # every 10 steps, each epoch end
    assert done.last_checkpoint_step == 88
    # The run fed the cost model: the next estimate uses a measured throughput.
    calibration = json.loads((manager.settings.store_root / ".calibration.json").read_text())
    assert calibration["devices"]["cpu"]["runs"] == 1

    wait_for("the webhook", lambda: receiver.received)
    (payload,) = receiver.payloads()
    assert payload["id"] == job.id and payload["status"] == "succeeded"
    assert payload["model_id"] == done.model_id
    assert receiver.received[0][0]["Fnbundle-Event-Id"] == f"{job.id}:succeeded:1"

    with pytest.raises(Conflict):
        manager.cancel(job.id)  # finished: nothing to cancel
    with pytest.raises(Conflict):
        manager.retry(job.id)


def test_nan_loss_fails_the_job_as_diverged(make_manager, tiny_base, tmp_path):
    broken = nan_base(tiny_base, tmp_path / "broken-base")

    manager = make_manager()
    manager.start()
    job = submit(manager, tiny_base, "nan", params={"base": str(broken)})
    done = wait_terminal(manager, job.id)

    assert done.status == JobStatus.failed
    assert done.error is not None
    assert done.error["type"] == "training_failed" and done.error["reason"] == "diverged"
    assert done.error["message"].startswith("diverged")
    assert done.model_id is None and Store(manager.settings.store_root).list() == []
    assert states(manager.events(job.id))[-1] == "failed"


def test_a_failed_job_can_be_retried_and_then_succeeds(make_manager, tiny_base, tmp_path):
    data = tmp_path / "reviews.csv"
    shutil.copy(REVIEWS, data)
    manager = make_manager()
    job = submit(manager, tiny_base, "retried", params={"data": str(data)})
    data.rename(tmp_path / "away.csv")  # gone after the submit checked it
    manager.start()
    failed = wait_terminal(manager, job.id)
    assert failed.status == JobStatus.failed
    assert failed.error is not None and failed.error["type"] != "internal_error"

    (tmp_path / "away.csv").rename(data)
    retried = manager.retry(job.id)
    assert retried.status == JobStatus.queued and retried.error is None
    done = wait_terminal(manager, job.id)

    assert done.status == JobStatus.succeeded and done.model_id
    assert done.attempts == 2
    events = manager.events(job.id)
    assert states(events) == ["queued", "running", "failed", "queued", "running", "succeeded"]
    assert_monotone(events)


# --- stopping ------------------------------------------------------------------------------


def test_cancel_a_queued_job_and_it_never_starts(make_manager, tiny_base, receiver):
    manager = make_manager(max_running=1, webhook_secret=SECRET, webhook_allow_private=True)
    first = submit(manager, tiny_base, "first")
    second = submit(manager, tiny_base, "second", webhook_url=receiver.url)
    manager.start()
    wait_for("the first job to run", lambda: manager.get(first.id).status == JobStatus.running)

    cancelled = manager.cancel(second.id)
    assert cancelled.status == JobStatus.cancelled
    assert manager.cancel(second.id).status == JobStatus.cancelled  # again: no error
    manager.cancel(first.id)
    assert wait_terminal(manager, first.id).status == JobStatus.cancelled

    assert states(manager.events(second.id)) == ["queued", "cancelled"]  # never "running"
    assert manager.get(second.id).attempts == 0
    assert not (manager.settings.jobs_root / second.id).exists()  # no worker, no folder
    wait_for("the webhook", lambda: receiver.received)
    assert receiver.payloads()[0]["status"] == "cancelled"


def test_cancel_a_running_job_stops_its_worker_and_keeps_a_checkpoint(make_manager, tiny_base):
    manager = make_manager()
    manager.start()
    job = submit(manager, tiny_base, "cancelme", params={"epochs": 20, "patience": 0})
    wait_for("training to start", lambda: manager.get(job.id).progress.step >= 3)
    pid = worker_pid(manager, job.id)
    assert pid is not None and pid_alive(pid)

    asked = manager.cancel(job.id)
    assert asked.status == JobStatus.running and asked.cancel_requested
    assert manager.cancel(job.id).cancel_requested  # asking twice is fine
    done = wait_terminal(manager, job.id)

    assert done.status == JobStatus.cancelled and done.error is None
    wait_for("the worker process to be gone", lambda: not pid_alive(pid))
    events = manager.events(job.id)
    assert states(events) == ["queued", "running", "cancelled"]
    # It stopped cooperatively: a checkpoint at the very step it stopped, far from the end.
    assert done.last_checkpoint_step == done.progress.step < done.progress.total_steps  # type: ignore[operator]
    assert events[-2].type == "checkpoint" and events[-2].data["step"] == done.progress.step
    assert manager.cancel(job.id) == done  # a cancelled job is answered as it is
    with pytest.raises(Conflict):
        manager.retry(job.id)


def test_a_budget_stops_the_job_with_partial_metrics_and_a_checkpoint(make_manager, tiny_base):
    manager = make_manager()
    manager.start()
    # Cost is time, so size the budget by timing one epoch here first: worth a few epochs,
    # the first one completes and the hundredth never does.
    timing = submit(manager, tiny_base, "timing", params={"epochs": 100, "patience": 0})
    wait_for("one epoch", lambda: any(e.type == "epoch" for e in manager.events(timing.id)))
    manager.cancel(timing.id)
    events = manager.events(timing.id)
    running_at = next(e.at for e in events if e.data.get("status") == "running")
    epoch_at = next(e.at for e in events if e.type == "epoch")
    seconds = (epoch_at - running_at).total_seconds() * 2
    # Costs are reported in whole micro-dollars: a budget in them compares exactly.
    budget = round(timing.estimate["usd_per_s"] * seconds, 6)  # type: ignore[index]
    wait_terminal(manager, timing.id)

    job = submit(
        manager, tiny_base, "budget", budget_usd=budget, params={"epochs": 100, "patience": 0}
    )
    done = wait_terminal(manager, job.id)

    assert done.status == JobStatus.stopped_budget
    assert done.error is not None and done.error["type"] == "stopped_budget"
    assert done.cost_usd >= budget
    assert done.metrics.get("epoch", 0) >= 1 and "accuracy" in done.metrics  # partial metrics
    assert done.last_checkpoint_step == done.progress.step
    assert done.progress.step < done.progress.total_steps  # type: ignore[operator]
    assert done.model_id is None
    events = manager.events(job.id)
    warnings = [e.data["fraction"] for e in events if e.type == "cost_usd"]
    assert warnings == [0.5, 0.75, 0.9, 1.0]
    assert states(events)[-1] == "stopped_budget"


def test_a_job_past_its_time_limit_is_stopped_even_if_it_does_not_listen(make_manager, tiny_base):
    # One second of allowed time ends while the worker is still starting up (it polls
    # nothing then), so the scheduler has to signal it.
    manager = make_manager(jobs_cancel_grace_s=0.5)
    manager.start()
    job = submit(manager, tiny_base, "slow", timeout_s=1)
    pid = wait_for("a worker", lambda: worker_pid(manager, job.id))
    done = wait_terminal(manager, job.id)

    assert done.status == JobStatus.timed_out
    assert done.error is not None and done.error["type"] == "timed_out"
    wait_for("the worker process to be gone", lambda: not pid_alive(pid))
    assert states(manager.events(job.id)) == ["queued", "running", "timed_out"]
    retried = manager.retry(job.id)  # timed_out is retryable
    assert retried.status == JobStatus.queued
    manager.cancel(job.id)


# --- restarts ------------------------------------------------------------------------------


def test_a_new_manager_resumes_the_jobs_of_a_stopped_one(make_manager, tiny_base):
    first = make_manager()
    first.start()
    job = submit(first, tiny_base, "restart", params={"epochs": 3})
    wait_for(
        "a checkpoint past the first epoch",
        lambda: (first.get(job.id).last_checkpoint_step or 0) > 50,
    )
    pid = worker_pid(first, job.id)
    first.stop()
    assert first.get(job.id).status == JobStatus.running  # left for the next start
    assert pid is not None and not pid_alive(pid)
    stopped_at = first.get(job.id).progress.step

    second = make_manager()
    second.start()
    done = wait_terminal(second, job.id)

    assert done.status == JobStatus.succeeded and done.attempts == 2
    events = second.events(job.id)
    assert states(events) == ["queued", "running", "queued", "running", "succeeded"]
    assert_monotone(events)
    assert [e.data["step"] for e in events if e.type == "step"] == list(range(1, 133))
    resumed = next(e for e in events if e.type == "log" and "resuming" in e.data["message"])
    assert "gateway restarted" in resumed.data["message"]
    checkpoint = int(resumed.data["message"].rsplit(" ", 1)[1])
    assert 50 < checkpoint <= stopped_at
    assert os.path.isdir(second.settings.jobs_root / job.id / "checkpoints")


def test_a_job_survives_its_gateway_being_killed(make_manager, tiny_base, tmp_path):
    """kill -9 of the process that runs the manager: its worker notices and stops, and the
    next manager on the same folder resumes the job."""
    import subprocess
    import sys

    from fnbundle.jobs.worker import settings_env

    client = make_manager()  # not started: it only submits and reads
    job = submit(client, tiny_base, "orphan")
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from fnbundle.jobs.manager import JobManager; "
            "from fnbundle.settings import Settings; "
            "JobManager(Settings()).start(); time.sleep(3600)",
        ],
        env=settings_env(client.settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("a checkpoint", lambda: (client.get(job.id).last_checkpoint_step or 0) >= 20)
        pid = worker_pid(client, job.id)
    finally:
        gateway.kill()
        gateway.wait()
    assert pid is not None
    wait_for("the orphaned worker to stop by itself", lambda: not pid_alive(pid))
    assert client.get(job.id).status == JobStatus.running  # left for the next manager

    successor = make_manager()
    successor.start()
    done = wait_terminal(successor, job.id)

    assert done.status == JobStatus.succeeded and done.attempts == 2
    events = successor.events(job.id)
    assert states(events) == ["queued", "running", "queued", "running", "succeeded"]
    assert_monotone(events)
    assert [e.data["step"] for e in events if e.type == "step"] == list(range(1, 89))


def test_a_job_trains_on_an_uploaded_dataset_named_by_its_id(make_manager, tiny_base):
    from fnbundle.datasets import DatasetStore, datasets_root

    manager = make_manager()
    info, _ = DatasetStore(datasets_root(manager.settings)).add_file(
        REVIEWS, max_bytes=10 << 20, source="test"
    )
    manager.start()
    job = submit(manager, tiny_base, "fromds", params={"data": info.id, "epochs": 1})
    assert job.params["data"] == info.id  # not anchored under a data root like a path
    done = wait_terminal(manager, job.id)
    assert done.status == JobStatus.succeeded, done.error
    assert Store(manager.settings.store_root).resolve("fromds").id == done.model_id
    with pytest.raises(Exception, match="No dataset ds-0000000000000000"):
        submit(manager, tiny_base, "nods", params={"data": "ds-0000000000000000"})
