"""What the ``/v1/jobs`` routes ask of a job runtime, as a protocol.

One implementation answers it: :class:`~fnbundle.jobs.service.JobService`, over a store and
a launcher per runtime: the local manager (:class:`~fnbundle.jobs.manager.JobManager`:
SQLite, worker processes), :class:`~fnbundle.jobs.modal_backend.ModalJobs` (a
``modal.Dict``, spawned Modal functions) and :class:`~fnbundle.jobs.runpod_backend.RunPodJobs`
(the gateway's ledger, a RunPod endpoint's job API). Key rules: job ids come from
:func:`~fnbundle.jobs.schema.new_job_id` (the routes refuse any other shape); failures are
:class:`~fnbundle.errors.FnbError` subclasses (404 unknown job, 409 for a move the state
machine refuses, 422 naming ``params.<field>``); ``follow`` ends after the terminal
``state`` event. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from fnbundle.jobs.schema import Job, JobEvent, JobStatus, JobSubmit

if TYPE_CHECKING:
    from fnbundle.jobs.service import JobService
    from fnbundle.settings import Settings


class JobBackend(Protocol):
    """Training jobs somewhere: submit, read, follow, cancel, retry."""

    def start(self) -> None:
        """Begin the work (the app's start-up); cheap and idempotent."""
        ...

    def stop(self) -> None:
        """End this process's part of the work (the app's shutdown)."""
        ...

    def submit(self, req: JobSubmit) -> tuple[Job, bool]:
        """``(job, True)`` for a new job; ``(the key's job, False)`` for a known key."""
        ...

    def get(self, job_id: str) -> Job: ...

    def list(
        self,
        *,
        status: builtins.list[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Newest first; ``before`` (a job id) pages to older jobs."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job; a cancelled one is answered as is; 409 otherwise."""
        ...

    def retry(self, job_id: str) -> Job:
        """Queue a failed or timed-out job again (it resumes from its checkpoint); 409 otherwise."""
        ...

    def follow(self, job_id: str, after: int = 0, poll_s: float = 0.2) -> AsyncIterator[JobEvent]:
        """Every event after ``after``, then new ones, until the terminal state event."""
        ...


if TYPE_CHECKING:  # the job service is a backend (checked by mypy, costs nothing at run time)

    def _service_is_a_backend(service: JobService) -> JobBackend:
        return service


def job_backend(settings: Settings) -> JobBackend:
    """The backend the settings ask for: :class:`RunPodJobs` on ``jobs_runpod_endpoint``
    when it is set (the gateway in front of RunPod training endpoints: one, or one per
    hardware class), else the local
    worker processes."""
    if settings.jobs_runpod_endpoint:
        from fnbundle.jobs.runpod_backend import RunPodJobs
        from fnbundle.settings import runpod_endpoints

        return RunPodJobs(
            settings,
            runpod_endpoints(settings.jobs_runpod_endpoint),
            settings.runpod_api_key.get_secret_value(),
            base_url=settings.jobs_runpod_url or None,
        )
    from fnbundle.jobs.manager import JobManager

    return JobManager(settings)
