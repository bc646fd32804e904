"""The job vocabulary every runtime shares: what a client submits, what it reads back, and
the typed events a job streams.

Key rules: a job's ``status`` only moves along :data:`TRANSITIONS`; terminal states never
change again (a retry is a new attempt of the same job, see :data:`RETRYABLE`); an event's
``seq`` starts at 1 and grows by one per job, so a client replays from any point with
``after=<seq>``. The local runtime, Modal and RunPod all answer with these models.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"
    stopped_budget = "stopped_budget"


TERMINAL = frozenset(
    {
        JobStatus.succeeded,
        JobStatus.failed,
        JobStatus.cancelled,
        JobStatus.timed_out,
        JobStatus.stopped_budget,
    }
)
RETRYABLE = frozenset({JobStatus.failed, JobStatus.timed_out})

# Allowed moves. running -> queued happens when a worker dies and the job waits to resume;
# queued -> failed when a platform could not start it (a Modal spawn refused, a call that
# died before it claimed the job).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.cancelled, JobStatus.failed}),
    JobStatus.running: frozenset(TERMINAL | {JobStatus.queued}),
    JobStatus.failed: frozenset({JobStatus.queued}),  # retry
    JobStatus.timed_out: frozenset({JobStatus.queued}),  # retry
    JobStatus.succeeded: frozenset(),
    JobStatus.cancelled: frozenset(),
    JobStatus.stopped_budget: frozenset(),
}

if TYPE_CHECKING:
    Task = str
else:  # the training tasks of the registry, an enum in the OpenAPI document
    from fnbundle.tasks import REGISTRY

    Task = Literal[tuple(sorted(REGISTRY.training))]

# The shape of the ids jobs get (``job-<UTC stamp>-<8 hex>``, see new_job_id); the
# routes answer any other id 404 without a lookup, and a worker refuses it as a folder name.
JOB_ID = re.compile(r"job-[0-9]{14}-[0-9a-f]{8}")


def new_job_id() -> str:
    """``job-<UTC stamp>-<random>``: sorts by creation time, safe in URLs and paths."""
    return f"job-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


# Event types a job streams (``JobEvent.type``):
#   state       {"status", "reason"?}                 every status change
#   step        {"step", "total_steps", "epoch", "loss", "lr", "eta_s", "cost_usd"}
#                                                   (+ "tokens_per_s" for a language model)
#   epoch       {"epoch", "step", "eval_loss", "train_loss"}
#   eval_metric {"epoch", "step", "name", "value"}    one per metric (accuracy, macro_f1)
#   checkpoint  {"step", "epoch"}                      a complete checkpoint is on disk
#   cost_usd    {"cost_usd", "budget_usd", "fraction"} budget warnings at 50/75/90/100%
#   model       {"model", "index", "of", "state", "scores"?, "fit_s"?, "reason"?}
#                                                   one model of a compare run starts/ends
#   log         {"level", "message"}
EventType = Literal[
    "state", "step", "epoch", "eval_metric", "checkpoint", "cost_usd", "model", "log"
]


MIN_TIMEOUT_S = 1  # seconds: below this no worker can even start
MAX_TIMEOUT_S = 7 * 24 * 3600  # seconds: a week, RunPod's longest execution timeout


def gpu_names() -> dict[str, str]:
    """Every GPU of the price catalogue, upper-cased name -> the catalogue's spelling."""
    from fnbundle.platforms.catalogue import CATALOGUE

    return {name.upper(): name for gpus in CATALOGUE.values() for name in gpus}


class JobSubmit(BaseModel):
    """``POST /v1/jobs`` body. Numbers are finite (``Infinity`` or ``1e999`` is a 422, never
    a limit silently dropped) and ``gpu`` is a name from the price catalogue."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    params: dict[str, Any] = Field(
        description="The task's options, as the CLI takes them (data, name, base, epochs, ...)."
    )
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="Same key, same job."
    )
    budget_usd: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Stop (with a checkpoint) when the cost reaches this (USD).",
    )
    gpu: str | None = Field(
        None,
        max_length=40,
        description="A GPU of the price catalogue (Modal type or RunPod pool); default: the "
        "cheapest that fits.",
    )
    webhook_url: HttpUrl | None = Field(None, description="POSTed the job on a terminal state.")
    timeout_s: float | None = Field(
        None,
        ge=MIN_TIMEOUT_S,
        le=MAX_TIMEOUT_S,
        allow_inf_nan=False,
        description="Execution time limit (seconds); default from the endpoint declaration.",
    )

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = gpu_names()
        known = names.get(value.strip().upper())
        if known is None:
            raise ValueError(f"unknown GPU; one of: {', '.join(names.values())}")
        return known


class JobEvent(BaseModel):
    seq: int
    type: EventType
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0
    loss: float | None = None
    eta_s: float | None = None
    fraction: float = 0.0  # step / total_steps


class Job(BaseModel):
    """What ``GET /v1/jobs/{id}`` answers."""

    id: str
    task: Task
    status: JobStatus
    params: dict[str, Any]
    idempotency_key: str | None = None
    budget_usd: float | None = None
    gpu: str | None = None
    webhook_url: str | None = None
    timeout_s: float | None = None
    estimate: dict[str, Any] | None = None
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float = 0.0
    model_id: str | None = None
    error: dict[str, Any] | None = None  # {"type", "message"}; reason "diverged" etc.
    attempts: int = 0  # worker starts, resumes included
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_checkpoint_step: int | None = None
    cancel_requested: bool = False  # a running job was asked to stop and soon will
    request_id: str | None = None  # the X-Request-ID of the request that submitted it


def queued_event(job: Job) -> dict[str, Any]:
    """The data of a new job's first ``state`` event: ``queued``, and the id of the request
    that submitted it (so the job's events lead back to that request's log lines)."""
    data: dict[str, Any] = {"status": JobStatus.queued.value}
    if job.request_id is not None:
        data["request_id"] = job.request_id
    return data


class LostJob(Exception):
    """The job is no longer this worker's (it ended or was handed to another process)."""


class JobRow(Job):
    """A job with the bookkeeping only the runtime reads: every job store (SQLite, a Modal
    Dict, RunPod's ledger) keeps these fields; the API answers with :meth:`public`."""

    run_s: float = 0.0
    retry_base: int = 0
    worker_pid: int | None = None
    cancel_requested_at: float | None = None
    deadline: float | None = None

    def public(self) -> Job:
        return Job.model_validate(self.model_dump(include=set(Job.model_fields)))
