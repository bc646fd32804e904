"""The job API, written once: :class:`JobService` submits, reads, lists, follows, cancels and
retries jobs over a :class:`~fnbundle.jobs.stores.JobStore` (where state lives) and a
:class:`Launcher` (what starts and stops the work). The local gateway, Modal's ``JobsApi``
and the gateway over RunPod are each one store and one launcher.

Key rules:

* Every move is one of :mod:`fnbundle.jobs.state`, written by the store's compare-and-set;
  a job that moved between the read and the write is read again and decided anew.
* A launcher only launches and cancels work, routed by the task's hardware class
  (:func:`hardware_of`, from :data:`fnbundle.tasks.REGISTRY`), and may look at the platform
  when a job is read (``observe``: a Modal call that died, RunPod's own status and stream).
* Submit: the same idempotency key answers the key's job (``created=False``), whatever the
  rest of the request says. A launch the platform answered with :class:`LaunchFailed` ends
  the job ``failed`` (reason ``spawn_failed``); any other launch error (a RunPod 429 or
  502) forgets the new job and reaches the client, who may submit again with the same key.
* Cancel: queued, ``cancelled`` at once and its run stopped; running, the cancel flag is
  raised and the answer is ``running`` with ``cancel_requested: true`` until the worker
  stops with a checkpoint and writes ``cancelled``; cancelled, answered as is; otherwise 409.
* Retry: a failed or timed-out job is queued again with the resets of
  :func:`fnbundle.jobs.state.retry` and launched again; it resumes from its checkpoint.
* ``follow`` reads the status before the events, so it ends after the terminal ``state``
  event (every store writes that event no later than the status).
* A terminal move this service writes (a cancel, a failed launch) sends the job's webhook;
  the worker sends it for the outcomes it writes.

Importing this module imports neither the trainer nor any platform SDK.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Protocol

from fnbundle.errors import Conflict, FnbError, QueueFull
from fnbundle.jobs import state
from fnbundle.jobs.attempt import deliver_webhook
from fnbundle.jobs.schema import TERMINAL, Job, JobEvent, JobRow, JobStatus, JobSubmit
from fnbundle.jobs.stores import JobStore
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.jobs")

MOVE_TRIES = 5  # reads and compare-and-sets before a move that keeps losing is a 409


class LaunchFailed(FnbError):
    """The platform refused to start a recorded job (a Modal spawn that raised)."""

    status: ClassVar[int] = 503
    type: ClassVar[str] = "unavailable"


def hardware_of(task: str, params: dict[str, Any] | None = None) -> str:
    """The hardware class a job runs on (``gpu``, ``cpu``), from the registry: the task's
    own, or the one its ``params`` ask for (a tabular MLP on CUDA). Launchers route by it,
    so a task needs no platform code of its own."""
    from fnbundle.tasks import REGISTRY

    task_ = REGISTRY.training[task]
    return str(task_.hardware if params is None else task_.hardware_for(params))


def route_of(task: str, params: dict[str, Any] | None, routes: Mapping[str, object]) -> str:
    """The key of ``routes`` a job goes to: its task's own entry when the deployment has one
    (a LoRA job on its LoRA function, with its bigger GPU and QLoRA's packages), else its
    hardware class (:func:`hardware_of`)."""
    return task if task in routes else hardware_of(task, params)


class Launcher(Protocol):
    """What starts and stops a job's work on one platform."""

    def new_job(self, req: JobSubmit) -> Job:
        """Check ``req`` as this platform can (:func:`fnbundle.jobs.submit.new_job`)."""
        ...

    def launch(self, job: JobRow, *, retry: bool = False) -> str | None:
        """Start (or, with ``retry``, restart) ``job``'s work; the platform's id of the run,
        if it has one. Raises LaunchFailed, or the platform's FnbError."""
        ...

    def cancel(self, job: JobRow, handle: str | None, *, running: bool) -> None:
        """Stop the job's work (``running``: its worker was asked to stop by the flag)."""
        ...

    def observe(self, service: JobService, job: JobRow, *, stream: bool = False) -> JobRow:
        """The job as the platform knows it now (``stream``: a follower wants its events)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class JobService:
    """The job API over ``store`` and ``launcher`` (see the module's key rules)."""

    poll_s: float = 0.2  # seconds between a follower's reads

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        launcher: Launcher,
        *,
        max_queued: int | None = None,
    ):
        self.settings = settings
        self.store = store
        self.launcher = launcher
        self.max_queued = max_queued

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Begin the work (the app's start-up); cheap and idempotent."""
        self.launcher.start()

    def stop(self) -> None:
        """End this process's part of the work (the app's shutdown)."""
        self.launcher.stop()

    # --- reads ---------------------------------------------------------------------

    def _observe(self, job_id: str, *, stream: bool = False) -> JobRow:
        return self.launcher.observe(self, self.store.get(job_id), stream=stream)

    def get(self, job_id: str) -> Job:
        return self._observe(job_id).public()

    def list(
        self,
        *,
        status: builtins.list[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Newest first, as last known; ``before`` (a job id) pages to older jobs."""
        rows = self.store.find(status=status, task=task, limit=limit, before=before)
        return [row.public() for row in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by ``(task, status)``, as last recorded (GET /metrics)."""
        return self.store.counts()

    def events(
        self, job_id: str, after: int = 0, limit: int | None = None
    ) -> builtins.list[JobEvent]:
        self._observe(job_id, stream=True)  # NotFound for an unknown job
        return self.store.events(job_id, after, limit)

    async def follow(
        self, job_id: str, after: int = 0, poll_s: float | None = None
    ) -> AsyncIterator[JobEvent]:
        """Every event after ``after``, then new ones as they come, until the job is in a
        terminal state and all its events have been yielded."""
        self.store.get(job_id)
        while True:
            # Status first: events read afterwards include the terminal state event.
            job = await asyncio.to_thread(self._observe, job_id, stream=True)
            for event in await asyncio.to_thread(self.store.events, job_id, after):
                after = event.seq
                yield event
            if job.status in TERMINAL:
                return
            await asyncio.sleep(self.poll_s if poll_s is None else poll_s)

    # --- writes --------------------------------------------------------------------

    def submit(self, req: JobSubmit) -> tuple[Job, bool]:
        """Record and launch a job: ``(job, True)``, or ``(the key's job, False)``."""
        key = req.idempotency_key
        if key is not None and (owner := self.store.key_owner(key)) is not None:
            return self.store.get(owner).public(), False
        row, created = self.store.create(self.launcher.new_job(req), max_queued=self.max_queued)
        if not created:
            return row.public(), False
        return self._launch(row, retry=False).public(), True

    def _launch(self, row: JobRow, *, retry: bool) -> JobRow:
        try:
            handle = self.launcher.launch(row, retry=retry)
        except LaunchFailed as exc:
            log.error("job %s: the platform did not start it: %s", row.id, exc.message)
            error = {"type": exc.type, "message": exc.message}
            return self.end(row.id, JobStatus.failed, "spawn_failed", error, expect=row.status)
        except Exception as exc:
            if retry:  # failed again, with the cause: the next retry may get through
                message = exc.message if isinstance(exc, FnbError) else str(exc)
                error = {"type": "spawn_failed", "message": f"The retry did not start: {message}"}
                self.end(row.id, JobStatus.failed, "spawn_failed", error, expect=row.status)
            else:  # never started: forget it, so the same key may submit it again
                self.store.remove(row.id)
            raise
        if handle is not None:
            self.store.set_handle(row.id, handle)
        # The job as accepted (queued): its run may already have claimed it, which a GET shows.
        return row

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled at once. Running: answered ``running`` with
        ``cancel_requested: true``; it ends ``cancelled`` when its worker stops. Cancelled:
        as is. Any other finished state: Conflict (:func:`fnbundle.jobs.state.cancel`)."""
        for _ in range(MOVE_TRIES):  # the job may move between our read and our write
            job = self._observe(job_id)
            move = state.cancel(job_id, job.status, job.cancel_requested)
            if move is None:
                return job.public()
            running = move.status != JobStatus.cancelled
            try:
                if running:
                    row = self.store.request_cancel(job_id, move, expect=job.status)
                else:
                    row = self.store.apply(job_id, move, expect=job.status)
            except Conflict:
                continue
            self.launcher.cancel(row, self.store.handle(job_id), running=running)
            if row.status == JobStatus.cancelled:
                self.notify(row)
            return row.public()
        raise Conflict(f"Job {job_id} keeps changing state; try again.", field="status")

    def retry(self, job_id: str) -> Job:
        """Queue a failed or timed-out job again and launch it; it resumes from its newest
        checkpoint. 409 for any other state; 429 when the queue is full."""
        job = self._observe(job_id)
        move = state.retry(job_id, job.status, job.attempts)
        if self.max_queued is not None and self.store.count(JobStatus.queued) >= self.max_queued:
            raise QueueFull(
                f"{self.max_queued} jobs are already queued; try again later.",
                retry_after=self.store.queue_wait_s(),
            )
        row = self.store.apply(job_id, move, expect=job.status)
        return self._launch(row, retry=True).public()

    # --- for launchers -------------------------------------------------------------

    def end(
        self,
        job_id: str,
        to: JobStatus,
        reason: str,
        error: dict[str, Any] | None,
        *,
        expect: JobStatus = JobStatus.running,
    ) -> JobRow:
        """Write a terminal move the worker could not (it was lost, or never started) and
        send the webhook; the job as it is now if it moved meanwhile."""
        try:
            move = state.finish(job_id, expect, to, reason, error=error)
            done = self.store.apply(job_id, move, expect=expect)
        except Conflict:
            return self.store.get(job_id)
        self.notify(done)
        return done

    def notify(self, job: JobRow) -> None:
        """Send a finished job's webhook in the background."""
        if job.webhook_url and job.status in TERMINAL:
            threading.Thread(
                target=deliver_webhook,
                args=(self.settings, job.public()),
                name=f"webhook-{job.id}",
                daemon=True,
            ).start()
