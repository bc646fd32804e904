"""Training jobs on RunPod serverless endpoints: :class:`RunPodJobs` is the job service
(:mod:`fnbundle.jobs.service`) over the gateway's ledger
(:class:`~fnbundle.jobs.stores.LedgerStore`) and :class:`RunPodLauncher`, which starts and
cancels runs on the endpoint of the task's hardware class and reads back their status and
streamed events. The worker's side (a job's folder on the network volume) is
:mod:`fnbundle.jobs.runpod_run`.

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
  client holds), so a seq never repeats. The gateway records the moves it makes (queued,
  a retry, a cancel request); the worker records the rest.
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

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import httpx

from fnbundle.errors import FnbError, QueueFull
from fnbundle.jobs.schema import TERMINAL, Job, JobEvent, JobRow, JobStatus, JobSubmit, Progress
from fnbundle.jobs.service import JobService, route_of
from fnbundle.jobs.stores import LedgerStore
from fnbundle.jobs.submit import new_job
from fnbundle.settings import Settings

if TYPE_CHECKING:
    from fnbundle.jobs.service import Launcher

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


class RunPodUnavailable(FnbError):
    """RunPod refused or did not answer a call this server made for the client."""

    status: ClassVar[int] = 502
    type: ClassVar[str] = "upstream_error"


def _now() -> datetime:
    return datetime.now(UTC)


def apply_event(job: JobRow, event: JobEvent) -> JobRow:
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


class RunPodEndpoint:
    """One endpoint's job API: an HTTP client that turns RunPod's failures into FnbErrors."""

    def __init__(
        self,
        base: str,
        api_key: str,
        transport: httpx.BaseTransport | None,
        stream_timeout_s: float,
    ):
        self.base = base.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=TIMEOUT_S,
            transport=transport,
        )
        self.stream_timeout_s = stream_timeout_s
        self.read_method = "GET"  # the dev server answers 405: then POST

    def call(
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


class RunPodLauncher:
    """Runs and cancels jobs on the endpoint of their task, else of its hardware class
    (``endpoints``: task slug or hardware class -> endpoint id; one id serves every job), and reads
    back what RunPod knows of a run into the ledger."""

    def __init__(
        self,
        settings: Settings,
        store: LedgerStore,
        endpoints: str | Mapping[str, str],
        api_key: str,
        *,
        base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        stream_timeout_s: float = STREAM_TIMEOUT_S,
    ):
        self.settings, self.store = settings, store
        self.endpoints = endpoints
        self.api_key, self.base_url, self.transport = api_key, base_url, transport
        self.stream_timeout_s = stream_timeout_s
        self._clients: dict[str, RunPodEndpoint] = {}

    def endpoint(self, job: JobRow) -> RunPodEndpoint:
        """The client of the endpoint that runs the job's hardware class."""
        if isinstance(self.endpoints, str):
            endpoint_id = self.endpoints
        else:
            route = route_of(job.task, job.params, self.endpoints)
            if route not in self.endpoints:
                raise RunPodUnavailable(f"This gateway has no RunPod endpoint for {route} jobs.")
            endpoint_id = self.endpoints[route]
        if endpoint_id not in self._clients:
            base = self.base_url or f"{API_BASE}/{endpoint_id}"
            self._clients[endpoint_id] = RunPodEndpoint(
                base, self.api_key, self.transport, self.stream_timeout_s
            )
        return self._clients[endpoint_id]

    def start(self) -> None:
        """Nothing runs here: RunPod runs the jobs."""

    def stop(self) -> None:
        for client in self._clients.values():
            client.http.close()

    def new_job(self, req: JobSubmit) -> Job:
        """Params and webhook are checked here; the dataset where the worker can read it."""
        return new_job(req, self.settings, platform="runpod", estimate=False)

    def launch(self, job: JobRow, *, retry: bool = False) -> str | None:
        submit = JobSubmit(
            task=job.task,
            params=job.params,
            idempotency_key=job.idempotency_key,
            budget_usd=job.budget_usd,
            gpu=job.gpu,
            webhook_url=job.webhook_url,
            timeout_s=job.timeout_s,
        ).model_dump(mode="json")
        after_seq = self.store.last_seq(job.id)
        payload: dict[str, Any] = {"job": submit, "job_id": job.id, "after_seq": after_seq}
        if retry:
            payload["retry"] = True
        answer = self.endpoint(job).call("POST", "/run", {"input": payload})
        if not answer.get("id"):
            raise RunPodUnavailable(f"RunPod accepted job {job.id} without a job id: {answer}.")
        return str(answer["id"])

    def cancel(self, job: JobRow, handle: str | None, *, running: bool) -> None:
        """POST /cancel: RunPod stops the run (a running handler saves a checkpoint and
        its worker writes ``cancelled``, or RunPod's CANCELLED says so)."""
        if handle is not None:
            self.endpoint(job).call("POST", f"/cancel/{handle}")

    def observe(self, service: JobService, job: JobRow, *, stream: bool = False) -> JobRow:
        """Ask RunPod (``/stream`` for a follower, else ``/status``) and keep what it says."""
        rp_id = self.store.handle(job.id)
        if job.status in TERMINAL or rp_id is None:
            return job
        client = self.endpoint(job)
        source = "stream" if stream else "status"
        timeout = self.stream_timeout_s if stream else None
        answer = client.call(client.read_method, f"/{source}/{rp_id}", timeout=timeout)
        outputs = answer.get("stream") if stream else answer.get("output")
        job = self._ingest(job, outputs if isinstance(outputs, list) else [])
        job = self._settle(job, answer)
        self.store.save(job)
        return job

    def _add(self, job: JobRow, event_type: str, data: dict[str, Any]) -> JobRow:
        """Write an event RunPod did not send (a terminal state it reported without one)."""
        event = JobEvent(seq=self.store.last_seq(job.id) + 1, type=event_type, at=_now(), data=data)
        self.store.add_event(job.id, event)
        return apply_event(job, event)

    def _ingest(self, job: JobRow, outputs: Sequence[Any]) -> JobRow:
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
            if self.store.add_event(job.id, event):
                job = apply_event(job, event)
        return job

    def _settle(self, job: JobRow, answer: dict[str, Any]) -> JobRow:
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


class RunPodJobs(JobService):
    """The job routes' backend on RunPod (see the module docstring)."""

    poll_s = 1.0  # seconds between a follower's reads of /stream

    def __init__(
        self,
        settings: Settings,
        endpoint_id: str | Mapping[str, str],
        api_key: str,
        *,
        base_url: str | None = None,
        db_path: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        stream_timeout_s: float = STREAM_TIMEOUT_S,
    ):
        self.ledger = LedgerStore(db_path or settings.jobs_root / "runpod.sqlite3")
        self.runpod = RunPodLauncher(
            settings,
            self.ledger,
            endpoint_id,
            api_key,
            base_url=base_url,
            transport=transport,
            stream_timeout_s=stream_timeout_s,
        )
        super().__init__(settings, self.ledger, self.runpod)

    @property
    def read_method(self) -> str:
        """GET, or POST once a dev server answered 405 (it takes only POST for reads)."""
        methods = {c.read_method for c in self.runpod._clients.values()}
        return "POST" if "POST" in methods else "GET"


if TYPE_CHECKING:  # the launcher is a Launcher (checked by mypy, costs nothing at run time)

    def _is_a_launcher(launcher: RunPodLauncher) -> Launcher:
        return launcher


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
