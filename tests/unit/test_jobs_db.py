"""The job store and the manager's bookkeeping, without a worker: the transition table,
idempotency under parallel submits (threads and processes), listing, event replay, a
full queue, submit validation, cancel and retry of jobs that are not running."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fnbundle.errors import Conflict, InvalidRequest, NotFound, QueueFull, ValidationFailed
from fnbundle.jobs.db import JobDB
from fnbundle.jobs.manager import JobManager
from fnbundle.jobs.schema import TERMINAL, TRANSITIONS, Job, JobStatus, JobSubmit, new_job_id
from fnbundle.jobs.worker import settings_env
from fnbundle.settings import Settings

from tests.conftest import REPO, REVIEWS

pytestmark = pytest.mark.unit

PARALLEL = 50  # submits racing for one idempotency key


def make_job(key: str | None = None, task: str = "train_classifier") -> Job:
    return Job(
        id=new_job_id(),
        task=task,  # type: ignore[arg-type]
        status=JobStatus.queued,
        params={"data": "d.csv", "name": "m"},
        idempotency_key=key,
        created_at=datetime.now(UTC),
    )


def put_in(db: JobDB, status: JobStatus) -> str:
    """A new job in ``status``, reached by allowed moves only."""
    job, _ = db.create(make_job())
    if status == JobStatus.queued:
        return job.id
    claimed = db.claim_next(job.id)
    assert claimed is not None and claimed.id == job.id
    if status != JobStatus.running:
        db.transition(job.id, status)
    return job.id


@pytest.fixture
def db(tmp_path: Path) -> JobDB:
    return JobDB(tmp_path / "jobs")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        store=tmp_path / "store",
        jobs_dir=tmp_path / "jobs",
        data_roots=[REPO],
        jobs_max_queued=3,
    )


def submit_body(**overrides) -> JobSubmit:
    params = {"data": str(REVIEWS), "name": "unit", "epochs": 1}
    return JobSubmit.model_validate({"task": "train_classifier", "params": params} | overrides)


# --- the state machine -------------------------------------------------------------------


@pytest.mark.parametrize("start", list(JobStatus))
def test_only_the_moves_in_the_transition_table_happen(db, start):
    for target in JobStatus:
        job_id = put_in(db, start)
        before = db.events(job_id)
        if target in TRANSITIONS[start]:
            moved = db.transition(job_id, target, reason="test")
            assert moved.status == target
            last = db.events(job_id)[-1]
            assert last.type == "state" and last.data == {"status": target, "reason": "test"}
            assert last.seq == before[-1].seq + 1
            assert (moved.finished_at is not None) == (target in TERMINAL)
        else:
            with pytest.raises(Conflict):
                db.transition(job_id, target)
            assert db.get(job_id).status == start
            assert db.events(job_id) == before  # a refused move leaves no trace


def test_racing_moves_from_one_state_only_one_wins(db):
    job_id = put_in(db, JobStatus.running)
    outcomes: list[str] = []

    def move(to: JobStatus) -> None:
        try:
            db.transition(job_id, to)
            outcomes.append(to.value)
        except Conflict:
            outcomes.append("conflict")

    threads = [
        threading.Thread(target=move, args=(to,))
        for to in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled) * 4
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("conflict") == len(threads) - 1
    winner = next(o for o in outcomes if o != "conflict")
    assert db.get(job_id).status == winner
    assert [e.data["status"] for e in db.events(job_id)] == ["queued", "running", winner]


def test_unknown_job_is_not_found(db):
    with pytest.raises(NotFound):
        db.get("job-nope")
    with pytest.raises(NotFound):
        db.transition("job-nope", JobStatus.running)


def test_claim_takes_the_oldest_queued_job_and_counts_attempts(db):
    ids = [db.create(make_job())[0].id for _ in range(3)]
    first = db.claim_next()
    assert first is not None and first.id == ids[0] and first.attempts == 1
    db.transition(first.id, JobStatus.queued, reason="resume")  # a worker died
    again = db.claim_next()
    assert again is not None and again.id == ids[0] and again.attempts == 2
    assert again.started_at == first.started_at  # the first start is kept
    assert db.claim_next().id == ids[1]  # type: ignore[union-attr]


# --- idempotency -------------------------------------------------------------------------


def test_one_key_one_job_across_parallel_threads(db):
    barrier = threading.Barrier(PARALLEL)
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def submit() -> None:
        barrier.wait()
        job, created = db.create(make_job(key="same-key"))
        with lock:
            results.append((job.id, created))

    threads = [threading.Thread(target=submit) for _ in range(PARALLEL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == PARALLEL
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(db.find(limit=1000)) == 1
    assert len(db.events(results[0][0])) == 1  # one "queued" event, not fifty


def _submit_in_process(jobs_dir: str, barrier, out) -> None:
    barrier.wait()
    job, created = JobDB(Path(jobs_dir)).create(make_job(key="same-key"))
    out.put((job.id, created))


def test_one_key_one_job_across_parallel_processes(tmp_path):
    jobs_dir = tmp_path / "jobs"  # a new database: every process creates it at once
    # forkserver: forked cheaply from a clean single-threaded server, never from pytest's
    # own process (its threads would be copied mid-state).
    ctx = multiprocessing.get_context("forkserver")
    barrier, out = ctx.Barrier(PARALLEL), ctx.Queue()
    procs = [
        ctx.Process(target=_submit_in_process, args=(str(jobs_dir), barrier, out))
        for _ in range(PARALLEL)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(JobDB(jobs_dir).find(limit=1000)) == 1


# --- listing and events ------------------------------------------------------------------


def test_list_is_newest_first_with_filters_and_pages(db):
    ids = [db.create(make_job())[0].id for _ in range(5)]
    running = db.claim_next()
    assert running is not None
    db.transition(running.id, JobStatus.failed)
    assert [j.id for j in db.find()] == ids[::-1]
    assert [j.id for j in db.find(status=[JobStatus.failed])] == [ids[0]]
    assert [j.id for j in db.find(status=[JobStatus.queued, JobStatus.failed])] == ids[::-1]
    assert db.find(task="train_classifier", limit=2) == db.find(limit=2)
    page1 = db.find(limit=2)
    page2 = db.find(limit=2, before=page1[-1].id)
    page3 = db.find(limit=2, before=page2[-1].id)
    assert [j.id for j in page1 + page2 + page3] == ids[::-1]
    assert db.find(before=ids[0]) == []
    with pytest.raises(NotFound):
        db.find(before="job-unknown")


def test_events_replay_from_any_seq_without_gaps_or_repeats(db):
    job_id = put_in(db, JobStatus.running)
    writers = 8

    def write(n: int) -> None:
        for i in range(10):
            db.update(job_id, events=[("log", {"level": "info", "message": f"{n}-{i}"})])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = db.events(job_id)
    assert [e.seq for e in events] == list(range(1, 2 + writers * 10 + 1))
    assert db.events(job_id, after=40) == events[40:]
    assert db.events(job_id, after=40, limit=5) == events[40:45]
    assert db.events(job_id, after=len(events)) == []


# --- the manager without workers ---------------------------------------------------------


def test_a_full_queue_answers_queue_full_with_retry_after(settings):
    manager = JobManager(settings, max_queued=2)
    first, created = manager.submit(submit_body(idempotency_key="k1"))
    assert created and first.status == JobStatus.queued
    assert first.estimate is not None and first.estimate["usd"] > 0
    manager.submit(submit_body())
    with pytest.raises(QueueFull) as info:
        manager.submit(submit_body())
    assert info.value.status == 429 and info.value.type == "queue_full"
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    # A repeated submit of a queued job is not a new job: it is answered, full queue or not.
    again, created = manager.submit(submit_body(idempotency_key="k1"))
    assert again.id == first.id and not created
    assert len(manager.list()) == 2


def test_params_are_checked_with_the_task_schema(settings):
    manager = JobManager(settings)
    with pytest.raises(ValidationFailed) as info:
        manager.submit(submit_body(params={"data": str(REVIEWS), "name": "x", "epochs": 0}))
    assert info.value.field == "params.epochs" and info.value.status == 422
    with pytest.raises(ValidationFailed) as info:
        manager.submit(submit_body(params={"name": "x"}))
    assert info.value.field == "params.data"
    with pytest.raises(InvalidRequest):  # outside the data roots
        manager.submit(submit_body(params={"data": "/etc/passwd", "name": "x"}))
    assert manager.list() == []


def test_webhooks_need_a_secret_and_a_public_target(settings):
    url = "http://127.0.0.1:9/hook"
    with pytest.raises(InvalidRequest, match="FNB_WEBHOOK_SECRET") as info:
        JobManager(settings).submit(submit_body(webhook_url=url))
    assert info.value.field == "webhook_url"
    signed = settings.model_copy(update={"webhook_secret": "s3cret"})
    with pytest.raises(InvalidRequest) as info:
        JobManager(signed).submit(submit_body(webhook_url=url))
    assert info.value.field == "webhook_url"
    private_ok = signed.model_copy(update={"webhook_allow_private": True})
    job, _ = JobManager(private_ok).submit(submit_body(webhook_url=url))
    assert job.webhook_url == url


def test_cancel_and_retry_of_jobs_that_are_not_running(settings):
    manager = JobManager(settings)  # not started: nothing runs
    job, _ = manager.submit(submit_body())
    cancelled = manager.cancel(job.id)
    assert cancelled.status == JobStatus.cancelled and cancelled.finished_at is not None
    assert manager.cancel(job.id) == cancelled  # twice is fine, and changes nothing
    assert [e.data["status"] for e in manager.events(job.id)] == ["queued", "cancelled"]
    with pytest.raises(Conflict):
        manager.retry(job.id)

    done = put_in(manager.db, JobStatus.succeeded)
    with pytest.raises(Conflict):
        manager.cancel(done)
    with pytest.raises(Conflict):
        manager.retry(done)

    failed = put_in(manager.db, JobStatus.failed)
    retried = manager.retry(failed)
    assert retried.status == JobStatus.queued and retried.error is None
    assert manager.events(failed)[-1].data == {"status": "queued", "reason": "retry"}
    with pytest.raises(NotFound):
        manager.get("job-unknown")


def test_cancel_of_a_running_job_answers_running_with_the_request_flagged(settings):
    manager = JobManager(settings)  # not started: no worker, so nothing stops it
    job_id = put_in(manager.db, JobStatus.running)
    answer = manager.cancel(job_id)
    assert answer.status == JobStatus.running and answer.cancel_requested
    assert manager.cancel(job_id) == answer  # asked again: nothing new is written
    assert [e.type for e in manager.events(job_id)] == ["state", "state", "log"]
    manager.db.transition(job_id, JobStatus.cancelled, reason="cancelled")  # the worker stops
    assert manager.get(job_id).status == JobStatus.cancelled


def test_retry_resets_the_last_attempts_end_and_time_allowance(settings):
    manager = JobManager(settings)
    job_id = put_in(manager.db, JobStatus.running)
    manager.db.update(job_id, run_s=42.0, cost_usd=0.5)
    manager.db.transition(job_id, JobStatus.timed_out, error={"type": "timed_out", "message": "x"})
    retried = manager.retry(job_id)
    row = manager.db.get(job_id)
    assert retried.status == JobStatus.queued and retried.error is None
    assert retried.finished_at is None and not retried.cancel_requested
    assert row.run_s == 0.0 and row.retry_base == 1 and row.cost_usd == 0.5


def test_follow_replays_then_ends_with_the_terminal_state(settings):
    manager = JobManager(settings)
    job_id = put_in(manager.db, JobStatus.running)

    def finish_soon() -> None:
        manager.db.update(job_id, events=[("log", {"level": "info", "message": "working"})])
        manager.db.transition(job_id, JobStatus.succeeded)

    async def collect(after: int) -> list[int]:
        timer = threading.Timer(0.3, finish_soon)
        timer.start()
        seqs = [e.seq async for e in manager.follow(job_id, after=after, poll_s=0.05)]
        timer.join()
        return seqs

    assert asyncio.run(collect(after=1)) == [2, 3, 4]
    types = [e.type for e in manager.events(job_id)]
    assert types == ["state", "state", "log", "state"]


def test_settings_reach_a_worker_unchanged(settings):
    custom = settings.model_copy(
        update={
            "webhook_allowed_hosts": ["hooks.internal", "b.example"],
            "jobs_checkpoint_every": 7,
            "webhook_allow_private": True,
            "threads": 3,
        }
    )
    env = settings_env(custom, base={"PATH": "/bin", "FNB_THREADS": "9"})
    assert env["PATH"] == "/bin"
    rebuilt = _settings_from(env)
    assert rebuilt.model_dump() == custom.model_dump()


def _settings_from(env: dict[str, str]) -> Settings:
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()
