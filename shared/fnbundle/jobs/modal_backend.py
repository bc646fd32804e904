"""Training jobs on Modal: the web endpoint's :class:`ModalJobs` spawns the GPU function,
whose :func:`~fnbundle.jobs.modal_run.run_modal_job` trains; both meet in one ``modal.Dict``
(:data:`DICT_NAME`).

Keys of the Dict (values are plain JSON-able dicts and strings)::

    job:<id>         the job record (JobRow JSON): written at submit, then by the attempt
    call:<id>        the FunctionCall id of the job's current spawn
    cancel:<id>      unix time of the first cancel request; never removed
    key:<key>        the job id an idempotency key created
    event:<id>:<n>   the job's n-th event (JobEvent JSON), n = 1, 2, 3, ... without gaps
    jobs:<n>         the n-th job submitted (``list`` walks it newest first)
    events:<id>, jobs:last   where the last append ended (a hint that only saves probing)

Key rules:

* The Dict has no transactions, so every key has one writer at a time and every append is
  ``put(..., skip_if_exists=True)``: racing writers never overwrite each other; the loser
  takes the next number. A record is written by the web endpoint only while no attempt
  owns it (submit, retry, and failing a call that died without an outcome).
* Cancel follows :mod:`fnbundle.jobs.state` as every backend does: a queued job is
  cancelled at once (record, state event, ``FunctionCall.cancel()``); a running one gets
  the flag and answers ``running`` with ``cancel_requested: true``, its attempt stops with
  a checkpoint and writes ``cancelled``; a call still running twice the grace period after
  the flag is cancelled by the next reader, which writes ``cancelled``. A job that
  finished first answers 409. A retry removes the flag.
* Every write of an attempt checks that the record is still ``running`` with its attempt
  number; else LostJob, and it stops.
* Modal runs a preempted input again in a new container (and retries a crashed one): that
  attempt finds the record ``running``, counts attempt + 1 and resumes from the newest
  checkpoint committed to the Volume. The Volume is committed after every checkpoint and
  before the outcome is written, so a reader never sees ``succeeded`` before the model.
  A call that ended without an outcome is failed by the next reader that asks Modal.
* Modal drops a Dict entry after 7 days without reads or writes: the Dict is for watching
  jobs; the model store keeps what they produced.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from fnbundle.errors import Conflict, InvalidRequest, NotFound
from fnbundle.jobs import state
from fnbundle.jobs.attempt import deliver_webhook
from fnbundle.jobs.backend import JobBackend, select_jobs
from fnbundle.jobs.db import JobRow
from fnbundle.jobs.schema import TERMINAL, Job, JobEvent, JobStatus, JobSubmit
from fnbundle.jobs.state import Move
from fnbundle.jobs.submit import anchor_data, new_job
from fnbundle.settings import Settings

if TYPE_CHECKING:
    pass

log = logging.getLogger("fnbundle.jobs.modal")

DICT_NAME = "fnbundle-jobs"
PLATFORM = "modal"
RECORD_WAIT_S = 10.0  # seconds a losing idempotent submit waits for the winner's record
CHECK_CALL_EVERY_S = 10.0  # seconds between asking Modal whether a running job's call died
FOLLOW_GRACE_S = 5.0  # seconds follow waits for the terminal state event after the record

CallState = Literal["pending", "done", "failed"]


class KeyValue(Protocol):
    """What this module needs of a ``modal.Dict``; a plain ``dict`` has it too."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...

    def pop(self, key: str, default: Any = None) -> Any: ...


def default_state() -> KeyValue:
    import modal

    return cast(KeyValue, modal.Dict.from_name(DICT_NAME, create_if_missing=True))


def cancel_call(call_id: str) -> None:
    """Cancel a spawned call; Modal ends its input without retrying it."""
    import modal

    modal.FunctionCall.from_id(call_id).cancel()


def call_state(call_id: str) -> CallState:
    """Whether a spawned call still runs; asks Modal without waiting."""
    import modal

    try:
        modal.FunctionCall.from_id(call_id).get(timeout=0)
    except TimeoutError:
        return "pending"
    except modal.exception.OutputExpiredError:
        return "done"
    except Exception:
        return "failed"
    return "done"


class DictState:
    """The key layout above, over a ``modal.Dict`` or a ``dict``."""

    def __init__(self, d: KeyValue):
        self.d = d

    def put_new(self, key: str, value: Any) -> bool:
        """Set ``key`` only if it is absent; True if this call set it."""
        if isinstance(self.d, dict):
            return self.d.setdefault(key, value) is value
        return bool(self.d.put(key, value, skip_if_exists=True))  # type: ignore[attr-defined]

    def _append(self, hint: str, prefix: str, make: Callable[[int], Any]) -> int:
        n = int(self.d.get(hint) or 0) + 1
        while not self.put_new(f"{prefix}{n}", make(n)):
            n += 1
        self.d[hint] = n
        return n

    def _last(self, hint: str, prefix: str) -> int:
        n = int(self.d.get(hint) or 0)
        while self.d.get(f"{prefix}{n + 1}") is not None:
            n += 1
        return n

    # --- records ---------------------------------------------------------------------

    def record(self, job_id: str) -> JobRow | None:
        data = self.d.get(f"job:{job_id}")
        return None if data is None else JobRow.model_validate(data)

    def save(self, row: JobRow) -> None:
        self.d[f"job:{row.id}"] = row.model_dump(mode="json")

    def create(self, job: Job) -> JobRow:
        row = JobRow.model_validate(job.model_dump())
        self.save(row)
        self._append("jobs:last", "jobs:", lambda _n: job.id)
        self.append_event(job.id, "state", {"status": JobStatus.queued.value})
        return row

    def job_ids(self) -> Iterator[str]:
        """Newest first."""
        for n in range(self._last("jobs:last", "jobs:"), 0, -1):
            job_id = self.d.get(f"jobs:{n}")
            if job_id is not None:
                yield str(job_id)

    def call_id(self, job_id: str) -> str | None:
        value = self.d.get(f"call:{job_id}")
        return None if value is None else str(value)

    def set_call(self, job_id: str, call_id: str) -> None:
        self.d[f"call:{job_id}"] = call_id

    def cancelled_at(self, job_id: str) -> float | None:
        value = self.d.get(f"cancel:{job_id}")
        return None if value is None else float(value)

    def key_owner(self, key: str) -> str | None:
        value = self.d.get(f"key:{key}")
        return None if value is None else str(value)

    def public(self, row: JobRow) -> Job:
        """The job as readers see it: a running job with the cancel flag set says so."""
        if row.status == JobStatus.running and self.cancelled_at(row.id) is not None:
            row = row.model_copy(update={"cancel_requested": True})
        return row.public()

    def apply(self, row: JobRow, move: Move) -> JobRow:
        """Append a move's events, then save the record it leaves (see :mod:`.state`)."""
        for type_, data in move.events:
            self.append_event(row.id, type_, data)
        moved = row.model_copy(update=move.fields)
        self.save(moved)
        return moved

    def clear_cancel(self, job_id: str) -> None:
        """Remove a cancel flag (a retried job starts without one)."""
        self.d.pop(f"cancel:{job_id}", None)

    # --- events ----------------------------------------------------------------------

    def append_event(self, job_id: str, type_: str, data: dict[str, Any]) -> int:
        at = datetime.now(UTC).isoformat()
        return self._append(
            f"events:{job_id}",
            f"event:{job_id}:",
            lambda n: {"seq": n, "type": type_, "at": at, "data": data},
        )

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        out: list[JobEvent] = []
        n = after + 1
        while limit is None or len(out) < limit:
            data = self.d.get(f"event:{job_id}:{n}")
            if data is None:
                return out
            out.append(JobEvent.model_validate(data))
            n += 1
        return out


class ModalJobs(JobBackend):
    """The job routes' backend on Modal. ``spawn(job_id, submit_json)`` starts the
    training function and returns its call id (``TrainJobs().train_job.spawn(...)``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        spawn: Callable[[str, dict[str, Any]], str],
        state: KeyValue | None = None,
        cancel: Callable[[str], None] | None = None,
        check_call: Callable[[str], CallState] | None = None,
        gpu: str | None = None,
        refresh: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.state = DictState(state if state is not None else default_state())
        self.spawn = spawn
        self.cancel_call = cancel or cancel_call  # default: Modal's FunctionCall.cancel
        self.check_call = check_call or call_state  # default: Modal's FunctionCall.get
        self.gpu = gpu  # the GPU the training function is deployed with
        self.refresh = refresh  # e.g. a Volume reload, so a dataset uploaded just now is seen
        self._checked: dict[str, float] = {}  # job id -> monotonic time its call was asked

    def start(self) -> None:
        """Nothing runs in this process: Modal runs the jobs."""

    def stop(self) -> None:
        """Nothing runs in this process."""

    # --- reads -----------------------------------------------------------------------

    def _row(self, job_id: str) -> JobRow:
        row = self.state.record(job_id)
        if row is None:
            raise NotFound(f"No job {job_id[:80]!r}.", field="id")
        return row

    def get(self, job_id: str) -> Job:
        return self.state.public(self._check_call(self._row(job_id), force=True))

    def list(
        self,
        *,
        status: builtins.list[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Newest first; ``before`` (a job id) pages to older jobs."""
        if before is not None and self.state.record(before) is None:
            raise NotFound(f"No job {before[:80]!r}.", field="before")
        ids = self.state.job_ids()
        if before is not None:
            ids = itertools.dropwhile(lambda job_id: job_id != before, ids)
            next(ids, None)  # ``before`` itself
        rows = (self.state.record(job_id) for job_id in ids)
        jobs = (self.state.public(row) for row in rows if row is not None)
        return select_jobs(jobs, status, task, limit)

    def events(
        self, job_id: str, after: int = 0, limit: int | None = None
    ) -> builtins.list[JobEvent]:
        self._row(job_id)
        return self.state.events(job_id, after, limit)

    async def follow(
        self, job_id: str, after: int = 0, poll_s: float = 0.5
    ) -> AsyncIterator[JobEvent]:
        """Every event after ``after``, then new ones, until the job has finished and its
        terminal state event is out (or :data:`FOLLOW_GRACE_S` passed without it)."""
        self._row(job_id)
        ended_at: float | None = None
        while True:
            row = await asyncio.to_thread(self._row, job_id)
            job = self.state.public(await asyncio.to_thread(self._check_call, row))
            events = await asyncio.to_thread(self.state.events, job_id, after)
            done = False
            for event in events:
                after = event.seq
                done = event.type == "state" and event.data.get("status") in TERMINAL
                yield event
            if job.status in TERMINAL:
                ended_at = ended_at or time.monotonic()
                if done or time.monotonic() - ended_at >= FOLLOW_GRACE_S:
                    return
            await asyncio.sleep(poll_s)

    def _check_call(self, row: JobRow, force: bool = False) -> JobRow:
        """End a job whose call ended without an outcome (Modal gave up retrying, or a
        cancelled job's container was stopped): ``cancelled`` if a cancel was asked, else
        ``failed``. A running job that ignores its cancel flag past twice the grace period
        has its call cancelled."""
        if row.status not in (JobStatus.queued, JobStatus.running):
            return row
        now = time.monotonic()
        if not force and now - self._checked.get(row.id, -CHECK_CALL_EVERY_S) < CHECK_CALL_EVERY_S:
            return row
        self._checked[row.id] = now
        call_id = self.state.call_id(row.id)
        if call_id is None:
            return row
        asked = self.state.cancelled_at(row.id)
        if self.check_call(call_id) == "pending":
            if asked is None or time.time() - asked < 2 * self.settings.jobs_cancel_grace_s:
                return row
            self._cancel_call(row.id, call_id)  # it did not stop by itself: stop it
        latest = self._row(row.id)  # it may have written its outcome meanwhile
        if latest.status in TERMINAL:
            return latest
        if asked is not None:
            return self._end(latest, JobStatus.cancelled, "cancelled", None)
        message = "The training function ended without writing an outcome; its Modal logs have the details."
        return self._end(
            latest, JobStatus.failed, "worker_died", {"type": "worker_died", "message": message}
        )

    def _end(self, row: JobRow, to: JobStatus, reason: str, error: dict[str, Any] | None) -> JobRow:
        done = self.state.apply(row, state.finish(row.id, row.status, to, reason, error=error))
        self._notify(self.state.public(done))
        return done

    def _cancel_call(self, job_id: str, call_id: str) -> None:
        try:
            self.cancel_call(call_id)
        except Exception:
            log.warning("job %s: cancelling call %s failed", job_id, call_id, exc_info=True)

    def _notify(self, job: Job) -> None:
        if job.webhook_url:
            threading.Thread(target=deliver_webhook, args=(self.settings, job), daemon=True).start()

    # --- writes ----------------------------------------------------------------------

    def submit(self, req: JobSubmit) -> tuple[Job, bool]:
        """Check the job as the manager does, record it, spawn the training function."""
        if req.idempotency_key is not None:
            owner = self.state.key_owner(req.idempotency_key)
            if owner is not None:
                return self._wait_record(owner), False
        if self.gpu and req.gpu and req.gpu.upper() != self.gpu.upper():
            raise InvalidRequest(
                f"This deployment trains on {self.gpu}; submit without gpu or with gpu {self.gpu}.",
                field="gpu",
            )
        if self.refresh is not None:
            try:
                self.refresh()
            except Exception as exc:  # e.g. a reload while another request reads the Volume
                log.warning("could not refresh before a submit (%s); checking as is", exc)
        req = req.model_copy(update={"params": anchor_data(req.params, self.settings)})
        job = new_job(req, self.settings, platform=PLATFORM, gpu=self.gpu)
        key = req.idempotency_key
        if key is not None and not self.state.put_new(f"key:{key}", job.id):
            return self._wait_record(self.state.key_owner(key) or job.id), False
        row = self.state.create(job)
        return self.state.public(self._spawn(row, req)), True

    def _wait_record(self, job_id: str) -> Job:
        deadline = time.monotonic() + RECORD_WAIT_S
        while (row := self.state.record(job_id)) is None:
            if time.monotonic() > deadline:
                raise Conflict(f"Job {job_id} is still being created; try again.", field="id")
            time.sleep(0.1)
        return self.state.public(row)

    def _spawn(self, row: JobRow, req: JobSubmit) -> JobRow:
        submit = req.model_copy(update={"params": row.params}).model_dump(mode="json")
        try:
            call_id = self.spawn(row.id, submit)
        except Exception as exc:
            log.exception("job %s: spawn failed", row.id)
            error = {"type": "unavailable", "message": f"Modal did not start the job: {exc}"}
            return self._end(self._row(row.id), JobStatus.failed, "spawn_failed", error)
        self.state.set_call(row.id, call_id)
        # The job as accepted (queued), as every backend answers a submit or a retry; the
        # call may already be running it, which a GET shows.
        return row

    def cancel(self, job_id: str) -> Job:
        """As every backend (:func:`fnbundle.jobs.state.cancel`): queued, cancelled at once
        and its call too; running, the Dict's cancel flag is set and the attempt stops
        (with a checkpoint) and writes ``cancelled``; cancelled, answered as is; any other
        finished state, Conflict."""
        row = self._row(job_id)
        job = self.state.public(row)
        move = state.cancel(job_id, job.status, job.cancel_requested)
        if move is None or not self.state.put_new(f"cancel:{job_id}", time.time()):
            return self.state.public(self._row(job_id))
        if move.status == JobStatus.cancelled:  # queued: no attempt owns the record
            done = self.state.apply(row, move)
            call_id = self.state.call_id(job_id)
            if call_id is not None:
                self._cancel_call(job_id, call_id)
            self._notify(self.state.public(done))
        else:  # running: the attempt owns the record; only its events are appended here
            for type_, data in move.events:
                self.state.append_event(job_id, type_, data)
        return self.state.public(self._row(job_id))

    def retry(self, job_id: str) -> Job:
        """Spawn a failed or timed-out job again; it resumes from its newest checkpoint."""
        row = self._row(job_id)
        move = state.retry(job_id, row.status, row.attempts)
        self.state.clear_cancel(job_id)
        queued = self.state.apply(row, move)
        req = JobSubmit(
            task=row.task,
            params=row.params,
            budget_usd=row.budget_usd,
            gpu=row.gpu,
            webhook_url=row.webhook_url,
            timeout_s=row.timeout_s,
        )
        return self.state.public(self._spawn(queued, req))
