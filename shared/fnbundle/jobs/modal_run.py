"""The Modal training function's side of a job: claim it in the ``fnbundle-jobs`` Dict,
train with the Dict as the attempt's store, write the outcome.

Key rules (the Dict's layout and the rest are in :mod:`fnbundle.jobs.modal_backend`):
every move is one of :mod:`fnbundle.jobs.state` (a container that finds its job running
requeues it, then claims it as attempt + 1); every write checks that the record is still
``running`` with this attempt's number, else LostJob and the attempt stops writing; the
cancel flag stops the trainer (with a checkpoint) and the attempt writes ``cancelled``; the
Volume is committed after every checkpoint (a preempted input resumes from it in the next
container) and before the outcome is written (no reader sees ``succeeded`` before the
model is on the Volume for every container). A run stops itself ``timed_out`` (with a
checkpoint) at ``time_limit_s``, before Modal's function timeout would kill it without an
outcome; a container that fails its ``preflight`` (no usable GPU) fails the job before
training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fnbundle.jobs import state
from fnbundle.jobs.attempt import Attempt, deliver_webhook
from fnbundle.jobs.modal_backend import PLATFORM, DictState, KeyValue
from fnbundle.jobs.runpod_run import refuse_unfit
from fnbundle.jobs.schema import Job, JobEvent, JobRow, JobStatus, JobSubmit, LostJob
from fnbundle.jobs.submit import anchor_data, new_job
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.jobs.modal")


class ModalAttemptStore:
    """One attempt's view of its job in the Dict (see the module's key rules)."""

    def __init__(self, state: DictState, job_id: str, attempt: int, commit: Callable[[], None]):
        self.state, self.job_id, self.attempt, self.commit = state, job_id, attempt, commit

    def _mine(self) -> JobRow:
        row = self.state.record(self.job_id)
        if row is None or row.status != JobStatus.running or row.attempts != self.attempt:
            raise LostJob(f"job {self.job_id} is no longer attempt {self.attempt}'s")
        return row

    def events(self) -> list[JobEvent]:
        return self.state.events(self.job_id)

    def write(self, events: Sequence[tuple[str, dict[str, Any]]], **fields: Any) -> None:
        row = self._mine()
        for type_, data in events:
            self.state.append_event(self.job_id, type_, data)
        self.state.save(row.model_copy(update=fields))

    def cancel_requested(self) -> bool:
        return self.state.cancelled_at(self.job_id) is not None

    def checkpointed(self, step: int) -> None:
        self.commit()  # a retry in a new container resumes from it

    def finish(self, to: JobStatus, *, reason: str | None, **fields: Any) -> Job | None:
        self.commit()  # the model and the last checkpoint, before anyone reads the outcome
        try:
            row = self._mine()
        except LostJob:
            return None
        done = self.state.apply(row, state.finish(self.job_id, row.status, to, reason, **fields))
        return done.public()


def claim(state_: DictState, row: JobRow) -> JobRow | None:
    """This execution's attempt of ``row``: a job left running by a lost container is
    requeued first (it resumes from its checkpoint); a flagged one ends ``cancelled``
    instead. None when there is nothing to train."""
    flagged = state_.cancelled_at(row.id) is not None
    if row.status == JobStatus.running:
        if flagged:
            state_.apply(row, state.finish(row.id, row.status, JobStatus.cancelled, "cancelled"))
            return None
        why = "the training container stopped"
        row = state_.apply(row, state.requeue(row.id, row.status, why, row.last_checkpoint_step))
    if row.status != JobStatus.queued:
        return None
    if flagged:  # cancelled while queued: the web endpoint may not have closed it yet
        move = state.cancel(row.id, row.status, cancel_requested=False)
        if move is not None:
            state_.apply(row, move)
        return None
    return state_.apply(row, state.claim(row.id, row.status, row.attempts, row.started_at))


def run_modal_job(
    job_id: str,
    submit: dict[str, Any],
    settings: Settings,
    d: KeyValue,
    *,
    jobs_root: Path,
    commit: Callable[[], None],
    preflight: Callable[[], None] | None = None,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """The training function's body: claim the job, train (resuming from its checkpoints in
    ``<jobs_root>/<job id>/checkpoints``, on the Volume), write the outcome; returns the job
    as JSON. A ``preflight`` that raises an FnbError (no usable GPU) fails the job before
    training; ``time_limit_s`` (this execution's, the function's timeout less the time to
    save and publish) ends the job ``timed_out`` with a checkpoint before Modal would kill
    the container."""
    from fnbundle.jobs.schema import JOB_ID

    if not JOB_ID.fullmatch(job_id):
        return {"error": {"type": "invalid_request", "message": f"Invalid job id {job_id[:80]!r}."}}
    state_ = DictState(d)
    row = state_.record(job_id)
    if row is None:  # spawned without the web endpoint: check the job here
        req = JobSubmit.model_validate(submit)
        req = req.model_copy(update={"params": anchor_data(req.params, settings)})
        row = state_.create(new_job(req, settings, job_id=job_id, platform=PLATFORM))
    claimed = claim(state_, row)
    if claimed is None:
        return state_.public(state_.record(job_id) or row).model_dump(mode="json")
    row, attempt = claimed, claimed.attempts
    store = ModalAttemptStore(state_, job_id, attempt, commit)
    run = Attempt(settings, row, store)
    if time_limit_s is not None:
        run.deadline = min(run.deadline, time.time() + time_limit_s)
    try:
        finished = refuse_unfit(store, preflight) or run.run(jobs_root / job_id / "checkpoints")
    except LostJob as exc:
        log.warning("job %s: stopping without an outcome: %s", job_id, exc)
        finished = None
    if finished is not None:
        deliver_webhook(settings, finished)
    return state_.public(state_.record(job_id) or row).model_dump(mode="json")
