"""The job state machine, pure: every move a job makes, checked against
:data:`~fnbundle.jobs.schema.TRANSITIONS`, with the fields each move resets defined once.

Every runtime moves its jobs through these functions (the local SQLite store enforces the
same sources and resets in its ``UPDATE ... WHERE status IN``), so a cancel, a retry or a
resume leaves a job the same on the gateway, on Modal and on RunPod.

Key rules:

* A move the table does not allow is a :class:`~fnbundle.errors.Conflict` (a 409).
* Cancel: a queued job is ``cancelled`` at once; a running job stays ``running`` with
  ``cancel_requested: true`` until its worker stops (with a checkpoint) and writes
  ``cancelled``. That is the truthful answer: the work has not stopped yet, and a client
  that follows the events sees the terminal ``cancelled`` state when it has. Cancelling a
  cancelled job answers it as is; any other finished job is a 409.
* Retry queues a failed or timed-out job with a fresh time allowance (``run_s`` = 0) and a
  fresh attempt count (``retry_base`` = attempts so far); its cost keeps adding up.
* Requeue (a worker lost mid-job) sends a running job back to ``queued``; the next claim
  resumes it from its newest checkpoint as attempt + 1.
* A move returns the job after it and the ``state`` event that records it; the caller
  writes both together (one transaction where the store has them).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fnbundle.errors import Conflict
from fnbundle.jobs.schema import RETRYABLE, TERMINAL, TRANSITIONS, JobStatus

# The fields a move to ``queued`` clears (requeue and retry): nothing of the last attempt's
# worker, deadline, end or cancel request survives into the next one.
QUEUE_RESETS: dict[str, Any] = {
    "finished_at": None,
    "worker_pid": None,
    "cancel_requested": False,
    "cancel_requested_at": None,
    "deadline": None,
}
# A retry clears the error too, and starts a fresh time allowance (seconds).
RETRY_RESETS: dict[str, Any] = {**QUEUE_RESETS, "error": None, "run_s": 0.0}
# A claim starts an attempt: no worker owns it yet and its deadline is set by whoever runs it.
CLAIM_RESETS: dict[str, Any] = {"worker_pid": None, "deadline": None}
# A terminal move: no worker owns the job any more.
FINISH_RESETS: dict[str, Any] = {"worker_pid": None}

CANCEL_REQUESTED = "cancel requested"  # the log line a cancel of a running job writes


@dataclass(frozen=True)
class Move:
    """A job's move: the fields to set (``status`` among them) and the events to append,
    in order (a ``log`` event may precede the ``state`` event)."""

    fields: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def status(self) -> JobStatus | None:
        status = self.fields.get("status")
        return None if status is None else JobStatus(status)


def sources(to: JobStatus, narrowed: Collection[JobStatus] | None = None) -> set[JobStatus]:
    """The states a job may move to ``to`` from (within ``narrowed``, if given)."""
    found = {s for s, targets in TRANSITIONS.items() if to in targets}
    return found if narrowed is None else found & set(narrowed)


def check(job_id: str, current: JobStatus, to: JobStatus) -> None:
    """Conflict unless the table allows ``current -> to``."""
    if to not in TRANSITIONS[current]:
        raise Conflict(
            f"Job {job_id} is {current.value}; it cannot become {to.value}.", field="status"
        )


def _state(to: JobStatus, reason: str | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {"status": to.value}
    if reason:
        data["reason"] = reason
    return "state", data | extra


def _now() -> datetime:
    return datetime.now(UTC)


def claim(job_id: str, status: JobStatus, attempts: int, started_at: datetime | None) -> Move:
    """queued -> running as attempt + 1 (a running job whose worker was lost is requeued
    first, see :func:`requeue`)."""
    check(job_id, status, JobStatus.running)
    attempt = attempts + 1
    return Move(
        {
            **CLAIM_RESETS,
            "status": JobStatus.running,
            "attempts": attempt,
            "started_at": started_at or _now(),
        },
        [_state(JobStatus.running, attempt=attempt)],
    )


def requeue(job_id: str, status: JobStatus, why: str, last_checkpoint_step: int | None) -> Move:
    """running -> queued after its worker was lost; the log event says where it resumes."""
    check(job_id, status, JobStatus.queued)
    if status != JobStatus.running:
        raise Conflict(f"Job {job_id} is {status.value}; only a running job is requeued.")
    step = last_checkpoint_step
    where = f"resuming from step {step}" if step else "starting again from the beginning"
    return Move(
        {**QUEUE_RESETS, "status": JobStatus.queued},
        [
            ("log", {"level": "warning", "message": f"{why}; {where}"}),
            _state(JobStatus.queued, "resume"),
        ],
    )


def retry(job_id: str, status: JobStatus, attempts: int) -> Move:
    """failed | timed_out -> queued, with :data:`RETRY_RESETS`; 409 for any other state."""
    if status not in RETRYABLE:
        raise Conflict(
            f"Job {job_id} is {status.value}; only a failed or timed-out job can be retried.",
            field="status",
        )
    check(job_id, status, JobStatus.queued)
    return Move(
        {**RETRY_RESETS, "status": JobStatus.queued, "retry_base": attempts},
        [_state(JobStatus.queued, "retry")],
    )


def cancel(job_id: str, status: JobStatus, cancel_requested: bool) -> Move | None:
    """The move a cancel makes (see the module's key rules); None when there is nothing to
    change (already cancelled, or a running job already asked to stop)."""
    if status == JobStatus.queued:
        check(job_id, status, JobStatus.cancelled)
        return Move(
            {**FINISH_RESETS, "status": JobStatus.cancelled, "finished_at": _now()},
            [_state(JobStatus.cancelled, "cancelled")],
        )
    if status == JobStatus.running:
        if cancel_requested:
            return None
        return Move(
            {"cancel_requested": True, "cancel_requested_at": time.time()},
            [("log", {"level": "info", "message": CANCEL_REQUESTED})],
        )
    if status == JobStatus.cancelled:
        return None
    raise Conflict(
        f"Job {job_id} already ended {status.value}; only a queued or running job can be "
        "cancelled.",
        field="status",
    )


def finish(
    job_id: str,
    status: JobStatus,
    to: JobStatus,
    reason: str | None = None,
    event: dict[str, Any] | None = None,
    **fields: Any,
) -> Move:
    """running -> a terminal state, with ``fields`` (outcome, metrics, cost ...) set and
    ``event`` merged into the state event."""
    if to not in TERMINAL:
        raise ValueError(f"{to.value} is not a terminal state")
    check(job_id, status, to)
    return Move(
        {**FINISH_RESETS, "finished_at": _now(), **fields, "status": to},
        [_state(to, reason, **(event or {}))],
    )
