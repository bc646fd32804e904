"""The store protocol every job runtime implements, and the list filter they share."""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Collection, Iterator
from typing import Protocol

from fnbundle.jobs.schema import Job, JobEvent, JobRow, JobStatus
from fnbundle.jobs.state import Move


class JobStore(Protocol):
    """What :class:`~fnbundle.jobs.service.JobService` needs of a place that keeps jobs."""

    def create(self, job: Job, *, max_queued: int | None = None) -> tuple[JobRow, bool]:
        """Record ``job`` (queued) with its ``queued`` state event: ``(job, True)``, or
        ``(the key's job, False)`` when its idempotency key is taken. QueueFull when
        ``max_queued`` jobs already wait."""
        ...

    def remove(self, job_id: str) -> None:
        """Forget a job the platform never took (its key may be used again)."""
        ...

    def get(self, job_id: str) -> JobRow:
        """The job, with ``cancel_requested`` as its flag says; NotFound if unknown."""
        ...

    def find(
        self,
        *,
        status: Collection[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[JobRow]:
        """Newest first; ``before`` (a job id; NotFound if unknown) pages to older jobs."""
        ...

    def key_owner(self, key: str) -> str | None:
        """The id of the job created with idempotency key ``key``."""
        ...

    def apply(
        self, job_id: str, move: Move, *, expect: JobStatus, attempt: int | None = None
    ) -> JobRow:
        """Compare-and-set: write ``move`` if the job is ``expect`` (and at ``attempt``)."""
        ...

    def request_cancel(self, job_id: str, move: Move, *, expect: JobStatus) -> JobRow:
        """Raise a running job's cancel flag with ``move``'s events; Conflict if it moved."""
        ...

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        """The job's events after seq ``after``, in order."""
        ...

    def handle(self, job_id: str) -> str | None:
        """The platform's id of the job's current run (a Modal call, a RunPod job)."""
        ...

    def set_handle(self, job_id: str, handle: str) -> None: ...

    def count(self, status: JobStatus) -> int: ...

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by ``(task, status)`` (GET /metrics)."""
        ...

    def queue_wait_s(self) -> float:
        """Seconds until a queued job is likely to start (a full queue's Retry-After)."""
        ...


def select(
    rows: Iterator[JobRow] | builtins.list[JobRow],
    status: Collection[JobStatus] | None,
    task: str | None,
    limit: int,
) -> builtins.list[JobRow]:
    """The first ``limit`` of ``rows`` in one of ``status`` and of ``task`` (unset: any)."""
    wanted = (
        r for r in rows if (not status or r.status in status) and (not task or r.task == task)
    )
    return builtins.list(itertools.islice(wanted, limit))
