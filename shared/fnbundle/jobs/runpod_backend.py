"""Training jobs on a RunPod serverless endpoint: :class:`RunPodJobs` answers the job routes
through the endpoint's job API. The worker's side (a job's folder on the network volume)
is :mod:`fnbundle.jobs.runpod_run`.

The endpoint API (``https://api.runpod.ai/v2/<endpoint id>``, ``Authorization: Bearer``)::

    POST /run {"input": {"job": <JobSubmit>, "job_id": <our id>, "after_seq": n}} -> {"id"}
    GET  /status/<runpod id>   {"status", "output"?, "error"?}; output = every yielded event
    GET  /stream/<runpod id>   {"status", "stream": [{"output": <JobEvent>}, ...]}
    POST /cancel/<runpod id>

Statuses: IN_QUEUE -> queued, IN_PROGRESS -> running, COMPLETED -> what the job's own last
state event says (succeeded, or stopped_budget...), FAILED -> failed, CANCELLED ->
cancelled, TIMED_OUT -> timed_out.

Key rules:

* Our job id travels in the input; the worker keeps the job under that id on the network
  volume. A second run of the same id (a retry: a new /run; a worker lost mid-job) resumes
  from its newest checkpoint; its events continue after ``after_seq`` (the last seq this
  client holds), so a seq never repeats.
* ``/stream`` hands each output out once, so the client keeps every event it receives (and
  the last known job) in a SQLite file: one client per file, as one manager per jobs
  folder. A finished job is answered from there: RunPod forgets a job 30 minutes after it
  ends. Where RunPod ends a job without our terminal state event (a worker lost, a cancel),
  the client writes that event itself, so ``follow`` always ends with one.
* RunPod's failures become FnbErrors: 429 is a 429 with its Retry-After; a refused key,
  an unknown job or endpoint, a 5xx or no connection is a 502 ``upstream_error`` that says
  which. The SDK's dev server (``--rp_serve_api``) takes only POST for /status and /stream:
  a 405 switches this client to POST.
* The client cannot read datasets on the volume: a submit checks params and webhook, and
  the worker checks the dataset (a bad one fails the job with the estimate's error).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import httpx

from fnbundle.errors import Conflict, FnbError, NotFound, QueueFull
from fnbundle.jobs import state
from fnbundle.jobs.backend import JobBackend, select_jobs
from fnbundle.jobs.schema import TERMINAL, Job, JobEvent, JobStatus, JobSubmit, Progress
from fnbundle.jobs.submit import new_job
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.jobs.runpod")

API_BASE = "https://api.runpod.ai/v2"
TIMEOUT_S = 30.0  # seconds for one API call
STREAM_TIMEOUT_S = 120.0  # seconds for /stream, which may hold the request open
RETRY_AFTER_DEFAULT_S = 5.0  # seconds, when a 429 names none
STATUSES = {
    "IN_QUEUE": JobStatus.queued,
    "IN_PROGRESS": JobStatus.running,
    "COMPLETED": JobStatus.succeeded,
    "FAILED": JobStatus.failed,
    "CANCELLED": JobStatus.cancelled,
    "TIMED_OUT": JobStatus.timed_out,
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runpod_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order
    id TEXT NOT NULL UNIQUE,
    rp_id TEXT,                             -- RunPod's id of the job's latest run
    idempotency_key TEXT UNIQUE,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL                       -- the Job as last known (JSON)
);
CREATE TABLE IF NOT EXISTS runpod_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,                     -- JobEvent JSON
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""


class RunPodUnavailable(FnbError):
    """RunPod refused or did not answer a call this server made for the client."""

    status: ClassVar[int] = 502
    type: ClassVar[str] = "upstream_error"


def _now() -> datetime:
    return datetime.now(UTC)


def apply_event(job: Job, event: JobEvent) -> Job:
    """The job as ``event`` leaves it (the client's view is built from the events)."""
    data, update = event.data, cast(dict[str, Any], {})
    if event.type == "state" and data.get("status") in JobStatus.__members__:
        status = JobStatus(data["status"])
        update["status"] = status
        if "attempt" in data:
            update["attempts"] = int(data["attempt"])
        if status == JobStatus.running and job.started_at is None:
            update["started_at"] = event.at
        if status in TERMINAL:
            update["finished_at"] = event.at
            for key in ("model_id", "error", "metrics", "cost_usd", "last_checkpoint_step"):
                if key in data:
                    update[key] = data[key]
    elif event.type == "step":
        total = data.get("total_steps")
        update["progress"] = Progress(
            step=int(data["step"]),
            total_steps=total,
            epoch=float(data.get("epoch") or 0),
            loss=data.get("loss"),
            eta_s=data.get("eta_s"),
            fraction=round(int(data["step"]) / total, 4) if total else 0.0,
        )
        update["cost_usd"] = float(data.get("cost_usd") or job.cost_usd)
    elif event.type == "eval_metric":
        update["metrics"] = {**job.metrics, data["name"]: data["value"], "epoch": data["epoch"]}
    elif event.type == "checkpoint":
        update["last_checkpoint_step"] = int(data["step"])
    return job.model_copy(update=update) if update else job


class _Ledger:
    """The client's SQLite file: our id <-> RunPod id, the job as last known, its events."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        with self.lock:
            self.conn.executescript(_SCHEMA)

    def add(self, job: Job) -> bool:
        """Insert a new job; False when its idempotency key is taken."""
        with self.lock:
            cur = self.conn.execute(
                "INSERT INTO runpod_jobs (id, idempotency_key, task, status, job) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                (job.id, job.idempotency_key, job.task, job.status.value, job.model_dump_json()),
            )
            return cur.rowcount == 1

    def remove(self, job_id: str) -> None:
        with self.lock:
            self.conn.execute("DELETE FROM runpod_events WHERE job_id = ?", (job_id,))
            self.conn.execute("DELETE FROM runpod_jobs WHERE id = ?", (job_id,))

    def get(self, job_id: str) -> tuple[Job, str | None]:
        with self.lock:
            row = self.conn.execute(
                "SELECT job, rp_id FROM runpod_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"No job {job_id[:80]!r}.", field="id")
        return Job.model_validate_json(row[0]), row[1]

    def by_id(self, job_id: str) -> str | None:
        with self.lock:
            row = self.conn.execute("SELECT id FROM runpod_jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def by_key(self, key: str) -> str | None:
        with self.lock:
            row = self.conn.execute(
                "SELECT id FROM runpod_jobs WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def save(self, job: Job, rp_id: str | None = None) -> None:
        with self.lock:
            self.conn.execute(
                "UPDATE runpod_jobs SET job = ?, status = ?, rp_id = COALESCE(?, rp_id) WHERE id = ?",
                (job.model_dump_json(), job.status.value, rp_id, job.id),
            )

    def ids(self, before: str | None) -> list[str]:
        sql, args = "SELECT id FROM runpod_jobs", []
        if before is not None:
            sql += " WHERE seq < (SELECT seq FROM runpod_jobs WHERE id = ?)"
            args.append(before)
        with self.lock:
            return [r[0] for r in self.conn.execute(sql + " ORDER BY seq DESC", args)]

    def add_event(self, job_id: str, event: JobEvent) -> bool:
        with self.lock:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO runpod_events (job_id, seq, data) VALUES (?, ?, ?)",
                (job_id, event.seq, event.model_dump_json()),
            )
            return cur.rowcount == 1

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        sql = "SELECT data FROM runpod_events WHERE job_id = ? AND seq > ? ORDER BY seq"
        args: list[Any] = [job_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, limit))
        with self.lock:
            return [JobEvent.model_validate_json(r[0]) for r in self.conn.execute(sql, args)]

    def last_seq(self, job_id: str) -> int:
        with self.lock:
            row = self.conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM runpod_events WHERE job_id = ?", (job_id,)
            ).fetchone()
        return int(row[0])


class RunPodJobs(JobBackend):
    """The job routes' backend on a RunPod endpoint (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        endpoint_id: str,
        api_key: str,
        *,
        base_url: str | None = None,
        db_path: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        stream_timeout_s: float = STREAM_TIMEOUT_S,
    ):
        self.settings = settings
        self.base = (base_url or f"{API_BASE}/{endpoint_id}").rstrip("/")
        self.http = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=TIMEOUT_S,
            transport=transport,
        )
        self.stream_timeout_s = stream_timeout_s
        self.read_method = "GET"  # the dev server answers 405: then POST
        self.ledger = _Ledger(db_path or settings.jobs_root / "runpod.sqlite3")

    def start(self) -> None:
        """Nothing runs here: RunPod runs the jobs."""

    def stop(self) -> None:
        self.http.close()

    # --- RunPod calls ----------------------------------------------------------------

    def _call(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        try:
            r = self.http.request(method, path, json=body, timeout=timeout or TIMEOUT_S)
            if r.status_code == 405 and method == "GET":
                self.read_method = method = "POST"
                r = self.http.request(method, path, json=body, timeout=timeout or TIMEOUT_S)
        except httpx.TransportError as exc:
            raise RunPodUnavailable(f"Could not reach RunPod at {self.base}: {exc}.") from None
        code = r.status_code
        if code in (401, 403):
            raise RunPodUnavailable(
                f"RunPod refused this server's API key (HTTP {code}); check the RunPod API key."
            )
        if code == 404:
            raise RunPodUnavailable(
                f"RunPod knows no {path} at {self.base} (HTTP 404): a wrong endpoint id, or a "
                "job RunPod has already forgotten (30 minutes after it ended)."
            )
        if code == 429:
            raise QueueFull(
                "RunPod is rate-limiting this endpoint's requests; try again later.",
                retry_after=_retry_after(r.headers.get("retry-after")),
            )
        if code >= 400:
            raise RunPodUnavailable(
                f"RunPod answered {method} {path} with HTTP {code}: {r.text[:200]}"
            )
        try:
            answer = r.json()
        except ValueError:
            raise RunPodUnavailable(f"RunPod answered {method} {path} with no JSON.") from None
        if not isinstance(answer, dict):
            raise RunPodUnavailable(
                f"RunPod answered {method} {path} with {type(answer).__name__}."
            )
        return answer

    def _run(self, job: Job, after_seq: int, retry: bool = False) -> str:
        submit = JobSubmit(
            task=job.task,
            params=job.params,
            idempotency_key=job.idempotency_key,
            budget_usd=job.budget_usd,
            gpu=job.gpu,
            webhook_url=job.webhook_url,
            timeout_s=job.timeout_s,
        ).model_dump(mode="json")
        payload: dict[str, Any] = {"job": submit, "job_id": job.id, "after_seq": after_seq}
        if retry:
            payload["retry"] = True
        answer = self._call("POST", "/run", {"input": payload})
        if not answer.get("id"):
            raise RunPodUnavailable(f"RunPod accepted job {job.id} without a job id: {answer}.")
        return str(answer["id"])

    # --- the client's view -----------------------------------------------------------

    def _add(self, job: Job, event_type: str, data: dict[str, Any]) -> Job:
        """Write an event RunPod did not send (our own: queued, and terminal states)."""
        event = JobEvent(
            seq=self.ledger.last_seq(job.id) + 1, type=event_type, at=_now(), data=data
        )
        self.ledger.add_event(job.id, event)
        return apply_event(job, event)

    def _ingest(self, job: Job, outputs: Sequence[Any]) -> Job:
        for output in outputs:
            if isinstance(output, dict) and "output" in output and len(output) == 1:
                output = output["output"]  # a /stream item
            if isinstance(output, dict) and "error" in output and "seq" not in output:
                error = _error(output["error"])
                if job.status not in TERMINAL:
                    job = self._add(
                        job, "state", {"status": "failed", "reason": error["type"], "error": error}
                    )
                continue
            try:
                event = JobEvent.model_validate(output)
            except ValueError:
                log.warning("job %s: RunPod sent an output that is not a job event", job.id)
                continue
            if self.ledger.add_event(job.id, event):
                job = apply_event(job, event)
        return job

    def _settle(self, job: Job, answer: dict[str, Any]) -> Job:
        """Combine RunPod's status with what the job's events say."""
        status = STATUSES.get(str(answer.get("status")))
        if status is None or job.status in TERMINAL:
            return job
        if status in TERMINAL:
            data: dict[str, Any] = {"status": status.value}
            if status == JobStatus.failed:
                data["error"] = _error(answer.get("error") or "RunPod reports the job failed.")
                data["reason"] = data["error"]["type"]
            elif status == JobStatus.timed_out:
                message = "RunPod's execution timeout ended the job."
                data.update(reason="timed_out", error={"type": "timed_out", "message": message})
            elif status == JobStatus.cancelled:
                data["reason"] = "cancelled"
            return self._add(job, "state", data)
        return job.model_copy(update={"status": status})

    def _refresh(self, job_id: str, source: str = "status") -> Job:
        job, rp_id = self.ledger.get(job_id)
        if job.status in TERMINAL or rp_id is None:
            return job
        timeout = self.stream_timeout_s if source == "stream" else None
        answer = self._call(self.read_method, f"/{source}/{rp_id}", timeout=timeout)
        outputs = answer.get("stream") if source == "stream" else answer.get("output")
        job = self._ingest(job, outputs if isinstance(outputs, list) else [])
        job = self._settle(job, answer)
        self.ledger.save(job)
        return job

    # --- JobBackend ------------------------------------------------------------------

    def submit(self, req: JobSubmit) -> tuple[Job, bool]:
        """Check params and webhook, then POST /run; the same key answers the same job."""
        if req.idempotency_key is not None and (known := self.ledger.by_key(req.idempotency_key)):
            return self.ledger.get(known)[0], False
        job = new_job(req, self.settings, platform="runpod", estimate=False)
        if not self.ledger.add(job):
            return self.ledger.get(self.ledger.by_key(req.idempotency_key or "") or job.id)[
                0
            ], False
        job = self._add(job, "state", {"status": JobStatus.queued.value})
        try:
            rp_id = self._run(job, after_seq=self.ledger.last_seq(job.id))
        except Exception:
            self.ledger.remove(job.id)  # not submitted: the same key may try again
            raise
        self.ledger.save(job, rp_id)
        return job, True

    def get(self, job_id: str) -> Job:
        return self._refresh(job_id)

    def list(
        self,
        *,
        status: builtins.list[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Newest first, as this client last saw them (``get`` asks RunPod)."""
        if before is not None and self.ledger.by_id(before) is None:
            raise NotFound(f"No job {before[:80]!r}.", field="before")
        jobs = (self.ledger.get(job_id)[0] for job_id in self.ledger.ids(before))
        return select_jobs(jobs, status, task, limit)

    def events(
        self, job_id: str, after: int = 0, limit: int | None = None
    ) -> builtins.list[JobEvent]:
        self._refresh(job_id, "stream")
        return self.ledger.events(job_id, after, limit)

    async def follow(
        self, job_id: str, after: int = 0, poll_s: float = 1.0
    ) -> AsyncIterator[JobEvent]:
        """Pull /stream into the ledger and yield what is new, until the job has finished."""
        self.ledger.get(job_id)
        while True:
            job = await asyncio.to_thread(self._refresh, job_id, "stream")
            for event in await asyncio.to_thread(self.ledger.events, job_id, after):
                after = event.seq
                yield event
            if job.status in TERMINAL:
                return
            await asyncio.sleep(poll_s)

    def cancel(self, job_id: str) -> Job:
        """POST /cancel, as every backend answers (:func:`fnbundle.jobs.state.cancel`): a
        queued job is cancelled at once; a running one answers ``running`` with
        ``cancel_requested: true`` until RunPod (or the worker's own state event) says it
        stopped. Cancelled: as is. Finished: Conflict."""
        job = self._refresh(job_id)
        move = state.cancel(job_id, job.status, job.cancel_requested)
        if move is None:
            return job
        answer = self._call("POST", f"/cancel/{self.ledger.get(job_id)[1]}")
        if STATUSES.get(str(answer.get("status"))) not in (None, JobStatus.cancelled):
            job = self._refresh(job_id)  # it ended first
            if job.status in TERMINAL:
                raise Conflict(f"Job {job_id} already ended {job.status.value}.", field="status")
        for type_, data in move.events:
            job = self._add(job, type_, data)
        job = job.model_copy(update=_job_fields(move.fields))
        self.ledger.save(job)
        return job

    def retry(self, job_id: str) -> Job:
        """A new run of the same job (POST /run, same id): it resumes from its checkpoint.
        The worker writes the retry's state event (its seqs continue the client's)."""
        job = self._refresh(job_id)
        move = state.retry(job_id, job.status, job.attempts)
        rp_id = self._run(job, after_seq=self.ledger.last_seq(job_id), retry=True)
        job = job.model_copy(update=_job_fields(move.fields))
        self.ledger.save(job, rp_id)
        return job


def _job_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A move's fields that the client's :class:`Job` view has (not the worker's
    bookkeeping such as ``run_s`` or ``deadline``)."""
    return {k: v for k, v in fields.items() if k in Job.model_fields}


def _retry_after(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else RETRY_AFTER_DEFAULT_S
    except ValueError:  # an HTTP date: not worth parsing for a rate limit
        return RETRY_AFTER_DEFAULT_S


def _error(value: Any) -> dict[str, Any]:
    """RunPod carries a failed job's error as a string; ours is the JSON of the error object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"type": "worker_failed", "message": value[:500]}
    if isinstance(value, dict) and "type" in value and "message" in value:
        return value
    return {"type": "worker_failed", "message": str(value)[:500]}
