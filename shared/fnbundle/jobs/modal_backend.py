"""Training jobs on Modal: the web endpoint's :class:`ModalJobs` is the job service
(:mod:`fnbundle.jobs.service`) over the Dict store (:class:`~fnbundle.jobs.stores.DictStore`)
and :class:`ModalLauncher`, which spawns the training function of the task's hardware class;
its :func:`~fnbundle.jobs.modal_run.run_modal_job` trains. Both meet in one ``modal.Dict``
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

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from fnbundle.errors import InvalidRequest
from fnbundle.jobs.schema import TERMINAL, Job, JobRow, JobStatus, JobSubmit
from fnbundle.jobs.service import JobService, LaunchFailed, route_of
from fnbundle.jobs.stores import DICT_NAME, DictState, DictStore, KeyValue, default_state
from fnbundle.jobs.submit import anchor_data, new_job
from fnbundle.settings import Settings

if TYPE_CHECKING:
    from fnbundle.jobs.service import Launcher

log = logging.getLogger("fnbundle.jobs.modal")

PLATFORM = "modal"
CHECK_CALL_EVERY_S = 10.0  # seconds between asking Modal whether a running job's call died

CallState = Literal["pending", "done", "failed"]
Spawn = Callable[[str, dict[str, Any]], str]  # (job id, JobSubmit JSON) -> call id

__all__ = ["DICT_NAME", "DictState", "KeyValue", "ModalJobs", "ModalLauncher", "default_state"]


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


def submit_of(row: JobRow) -> dict[str, Any]:
    """The JobSubmit JSON a spawned call gets (read only when the Dict has no record)."""
    return JobSubmit(
        task=row.task,
        params=row.params,
        budget_usd=row.budget_usd,
        gpu=row.gpu,
        webhook_url=row.webhook_url,
        timeout_s=row.timeout_s,
    ).model_dump(mode="json")


class ModalLauncher:
    """Spawns a job's training function (``spawn`` maps a task slug or a hardware class to
    its spawner, the task's own entry first; or is the one spawner of every job) and cancels its call; a reader
    asks Modal whether a job's call died without an outcome."""

    def __init__(
        self,
        settings: Settings,
        store: DictStore,
        *,
        spawn: Spawn | Mapping[str, Spawn],
        cancel: Callable[[str], None] | None = None,
        check_call: Callable[[str], CallState] | None = None,
        gpu: str | Mapping[str, str | None] | None = None,
        refresh: Callable[[], None] | None = None,
    ):
        self.settings, self.store = settings, store
        self.spawners = spawn
        self.gpus = gpu
        self.cancel_call = cancel or cancel_call  # default: Modal's FunctionCall.cancel
        self.check_call = check_call or call_state  # default: Modal's FunctionCall.get
        self.refresh = refresh  # e.g. a Volume reload, so a dataset uploaded just now is seen
        self._checked: dict[str, float] = {}  # job id -> monotonic time its call was asked

    def gpu(self, task: str, params: dict[str, Any] | None = None) -> str | None:
        """The GPU the job's training function is deployed with (None: not declared, or
        a CPU function)."""
        if self.gpus is None or isinstance(self.gpus, str):
            return self.gpus
        return self.gpus.get(route_of(task, params, self.gpus))

    def start(self) -> None:
        """Nothing runs in this process: Modal runs the jobs."""

    def stop(self) -> None:
        """Nothing runs in this process."""

    def new_job(self, req: JobSubmit) -> Job:
        gpu = self.gpu(req.task, req.params)
        if gpu and req.gpu and req.gpu.upper() != gpu.upper():
            raise InvalidRequest(
                f"This deployment trains {req.task} on {gpu}; submit without gpu or with "
                f"gpu {gpu}.",
                field="gpu",
            )
        if self.refresh is not None:
            try:
                self.refresh()
            except Exception as exc:  # e.g. a reload while another request reads the Volume
                log.warning("could not refresh before a submit (%s); checking as is", exc)
        req = req.model_copy(update={"params": anchor_data(req.params, self.settings)})
        return new_job(req, self.settings, platform=PLATFORM, gpu=gpu)

    def launch(self, job: JobRow, *, retry: bool = False) -> str | None:
        if callable(self.spawners):
            spawn: Spawn = self.spawners
        else:
            route = route_of(job.task, job.params, self.spawners)
            found = self.spawners.get(route)
            if found is None:
                raise LaunchFailed(f"This deployment has no training function for {route} jobs.")
            spawn = found
        try:
            return spawn(job.id, submit_of(job))
        except Exception as exc:
            log.exception("job %s: spawn failed", job.id)
            raise LaunchFailed(f"Modal did not start the job: {exc}") from exc

    def cancel(self, job: JobRow, handle: str | None, *, running: bool) -> None:
        """A queued job's call is cancelled now; a running one stops by the Dict's flag
        (:meth:`observe` cancels its call if it does not within the grace period)."""
        if not running and handle is not None:
            self._cancel_call(job.id, handle)

    def _cancel_call(self, job_id: str, call_id: str) -> None:
        try:
            self.cancel_call(call_id)
        except Exception:
            log.warning("job %s: cancelling call %s failed", job_id, call_id, exc_info=True)

    def observe(self, service: JobService, job: JobRow, *, stream: bool = False) -> JobRow:
        """End a job whose call ended without an outcome (Modal gave up retrying, or a
        cancelled job's container was stopped): ``cancelled`` if a cancel was asked, else
        ``failed``. A running job that ignores its cancel flag past twice the grace period
        has its call cancelled. A follower asks Modal at most every CHECK_CALL_EVERY_S."""
        if job.status not in (JobStatus.queued, JobStatus.running):
            return job
        now = time.monotonic()
        last = self._checked.get(job.id, -CHECK_CALL_EVERY_S)
        if stream and now - last < CHECK_CALL_EVERY_S:
            return job
        self._checked[job.id] = now
        call_id = self.store.handle(job.id)
        if call_id is None:
            return job
        asked = self.store.state.cancelled_at(job.id)
        if self.check_call(call_id) == "pending":
            if asked is None or time.time() - asked < 2 * self.settings.jobs_cancel_grace_s:
                return job
            self._cancel_call(job.id, call_id)  # it did not stop by itself: stop it
        latest = self.store.get(job.id)  # it may have written its outcome meanwhile
        if latest.status in TERMINAL:
            return latest
        if asked is not None:
            return service.end(job.id, JobStatus.cancelled, "cancelled", None, expect=latest.status)
        message = (
            "The training function ended without writing an outcome; its Modal logs have "
            "the details."
        )
        error = {"type": "worker_died", "message": message}
        return service.end(job.id, JobStatus.failed, "worker_died", error, expect=latest.status)


class ModalJobs(JobService):
    """The job routes' backend on Modal: the job service over the Dict and
    :class:`ModalLauncher` (``spawn(job_id, submit_json)`` starts a training function and
    returns its call id: ``TrainJobs().train_job.spawn(...)``)."""

    poll_s = 0.5  # seconds between a follower's reads of the Dict

    def __init__(
        self,
        settings: Settings,
        *,
        spawn: Spawn | Mapping[str, Spawn],
        state: KeyValue | None = None,
        cancel: Callable[[str], None] | None = None,
        check_call: Callable[[str], CallState] | None = None,
        gpu: str | Mapping[str, str | None] | None = None,
        refresh: Callable[[], None] | None = None,
    ):
        store = DictStore(state if state is not None else default_state())
        self.modal = ModalLauncher(
            settings,
            store,
            spawn=spawn,
            cancel=cancel,
            check_call=check_call,
            gpu=gpu,
            refresh=refresh,
        )
        super().__init__(settings, store, self.modal)
        self.state = store.state

    def check_call(self, call_id: str) -> CallState:
        """Whether a spawned call still runs (Modal's answer, without waiting)."""
        return self.modal.check_call(call_id)


if TYPE_CHECKING:  # the launcher is a Launcher (checked by mypy, costs nothing at run time)

    def _is_a_launcher(launcher: ModalLauncher) -> Launcher:
        return launcher
