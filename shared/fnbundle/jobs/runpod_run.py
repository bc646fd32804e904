"""A RunPod worker's side of a training job: the job's folder on the network volume is its
store, so any worker that gets the same job id carries on where the last one stopped.

Layout of ``<jobs root>/<job id>/`` (jobs root: :func:`volume_jobs_root`)::

    job.json        the JobRow, replaced atomically (temporary file, then rename)
    events.jsonl    one JobEvent per line, seq 1, 2, 3, ... (the client may hold more)
    checkpoints/    the trainer's checkpoints

Key rules: the job id must have the shape the job routes accept (it names a folder); the
first run checks the job where the dataset can be read (params, dataset, base model, cost
estimate; a relative ``data`` path names a file under the first data root, the volume); a run that finds the job ``running`` resumes it (the worker before it was lost)
as attempt + 1; a failed or timed-out job runs again only when the input says ``retry``
(the gateway has written that retry's ``queued`` event, so the worker writes none);
a finished job is not run again, its last state event is sent once more. Events continue
after both the folder's last seq and the input's ``after_seq`` (what the client already
holds), so the client never receives a seq twice. Step events are thinned
(:class:`StepThinner`): at most one per :data:`STEP_EVENTS_EVERY_S`, and the newest step
always goes out before any other event, so the stream and the folder stay small, seqs stay
gapless and every epoch, checkpoint and state is preceded by its last step. A cancelled run
(RunPod stops the handler) sets ``stop``: the trainer saves a checkpoint and the job ends
``cancelled``. A worker that cannot run the job as declared (a GPU endpoint's worker
without a usable CUDA device) ends it ``failed`` with the cause before training starts.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from fnbundle.contract import parse
from fnbundle.errors import FnbError, InvalidRequest
from fnbundle.jobs import state
from fnbundle.jobs.attempt import Attempt, AttemptStore, deliver_webhook
from fnbundle.jobs.schema import (
    RETRYABLE,
    TERMINAL,
    Job,
    JobEvent,
    JobRow,
    JobStatus,
    JobSubmit,
    LostJob,
)
from fnbundle.jobs.submit import anchor_data, new_job
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.jobs.runpod")

# Seconds between two step events in a job's stream: every event is a line on the network
# volume and an item RunPod's /stream hands out, and a progress bar needs no more.
STEP_EVENTS_EVERY_S = 1.0

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


class StepThinner(Generic[T]):
    """Thins a stream's step events: a step goes out if ``every_s`` passed since the last one
    that did; otherwise it is held, and the newest held step goes out before the next other
    event (or at :meth:`flush`), so the last step before an epoch, a checkpoint or the end
    is never lost. Every other event goes out as it comes."""

    def __init__(
        self, every_s: float = STEP_EVENTS_EVERY_S, clock: Callable[[], float] = time.monotonic
    ):
        self.every_s, self.clock = every_s, clock
        self.sent_at = -math.inf  # clock seconds of the last step that went out
        self.held: T | None = None

    def __call__(self, kind: str | None, item: T) -> list[T]:
        """What goes out now for ``item`` (an event of type ``kind``), in order."""
        if kind != "step":
            return [*self.flush(), item]
        now = self.clock()
        if now - self.sent_at < self.every_s:
            self.held = item
            return []
        self.sent_at, self.held = now, None
        return [item]

    def flush(self) -> list[T]:
        """The held step, if any (at the end of a stream)."""
        held, self.held = self.held, None
        return [] if held is None else [held]


class VolumeStore:
    """A job's folder on the network volume: ``job.json`` (the JobRow, replaced atomically),
    ``events.jsonl`` (one JobEvent per line) and ``checkpoints/``. It is the attempt's
    store; ``emit`` gets every event it appends (the handler yields them). Step events
    pass a :class:`StepThinner`; a write whose only event is a held step does not touch the
    volume (the record catches up at the next write). That the job is still this run's is
    checked at every stop poll (a newer run counts a newer attempt)."""

    def __init__(
        self,
        folder: Path,
        *,
        after_seq: int = 0,
        emit: Callable[[dict[str, Any]], None] = lambda _event: None,
        stop: threading.Event | None = None,
    ):
        self.folder, self.emit = folder, emit
        self.stop = stop or threading.Event()  # set: the run was cancelled (RunPod stopped it)
        self.checkpoints = folder / "checkpoints"
        self.attempt = 0
        self.row: JobRow | None = None
        self.last_seq = max(after_seq, *(e.seq for e in self.events()), 0)
        self.thin: StepThinner[tuple[str, dict[str, Any]]] = StepThinner()

    def load(self) -> JobRow | None:
        try:
            return JobRow.model_validate_json((self.folder / "job.json").read_text())
        except FileNotFoundError:
            return None

    def save(self, row: JobRow) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".job.json.{os.getpid()}.tmp"
        tmp.write_text(row.model_dump_json())
        os.replace(tmp, self.folder / "job.json")
        self.row = row

    def append(self, type_: str, data: dict[str, Any]) -> JobEvent:
        self.last_seq += 1
        event = JobEvent(seq=self.last_seq, type=type_, at=_now(), data=data)
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(event.model_dump_json() + "\n")
        self.emit(event.model_dump(mode="json"))
        return event

    # --- AttemptStore ----------------------------------------------------------------

    def events(self) -> list[JobEvent]:
        try:
            lines = (self.folder / "events.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [JobEvent.model_validate_json(line) for line in lines if line.strip()]

    def write(self, events: Sequence[tuple[str, dict[str, Any]]], **fields: Any) -> None:
        if self.row is None:
            raise LostJob(f"no record in {self.folder}")
        kept = [out for event in events for out in self.thin(event[0], event)]
        for type_, data in kept:
            self.append(type_, data)
        self.row = self.row.model_copy(update=fields)
        if kept or not events:
            self.save(self.row)

    def cancel_requested(self) -> bool:
        row = self.load()
        if row is None or row.status != JobStatus.running or row.attempts != self.attempt:
            raise LostJob(f"job {self.folder.name} is no longer attempt {self.attempt}'s")
        return self.stop.is_set()

    def checkpointed(self, step: int) -> None:
        """Written to the network volume as it was saved: the next worker sees it."""

    def finish(self, to: JobStatus, *, reason: str | None, **fields: Any) -> Job | None:
        if self.row is None:
            return None
        for type_, data in self.thin.flush():  # the last step, before the state event
            self.append(type_, data)
        move = state.finish(self.row.id, self.row.status, to, reason, **fields)
        done = self.row.model_copy(update=move.fields)
        outcome = {k: getattr(done, k) for k in ("model_id", "error") if getattr(done, k)}
        self.save(done)
        [(type_, data)] = move.events
        summary = {
            "metrics": done.metrics,
            "cost_usd": done.cost_usd,
            "last_checkpoint_step": done.last_checkpoint_step,
        }
        self.append(type_, {**data, "reason": reason, **outcome, **summary})
        return done.public()

    def apply(self, row: JobRow, move: state.Move, *, recorded: bool = False) -> JobRow:
        """Append a move's events and save the record it leaves. ``recorded``: the gateway
        already wrote this move's ``state`` event (it queued a retry), so only its log
        events are appended here."""
        for type_, data in move.events:
            if not (recorded and type_ == "state"):
                self.append(type_, data)
        moved = row.model_copy(update=move.fields)
        self.save(moved)
        return moved


def open_volume_job(
    payload: dict[str, Any],
    settings: Settings,
    root: Path,
    *,
    gpu: str | None = None,
    emit: Callable[[dict[str, Any]], None] = lambda _event: None,
    stop: threading.Event | None = None,
) -> tuple[VolumeStore, JobRow | None]:
    """Check a job input and claim its job for this run: ``(store, the job to train)``, or
    ``(store, None)`` when it has already ended (its last state event is sent again)."""
    from fnbundle.jobs.schema import JOB_ID

    job_id = payload.get("job_id")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise InvalidRequest(f"Invalid job id {str(job_id)[:80]!r}.", field="job_id")
    req = parse(JobSubmit, payload.get("job"))
    req = req.model_copy(update={"params": anchor_data(req.params, settings)})
    store = VolumeStore(
        root / job_id, after_seq=int(payload.get("after_seq") or 0), emit=emit, stop=stop
    )
    row = store.load()
    if row is None:  # the first run: the worker is where the dataset can be read
        row = JobRow.model_validate(
            new_job(req, settings, job_id=job_id, platform="runpod", gpu=gpu).model_dump()
        )
        store.save(row)
    retried = bool(payload.get("retry"))
    if row.status in RETRYABLE and retried:
        row = store.apply(row, state.retry(job_id, row.status, row.attempts), recorded=True)
    if row.status in TERMINAL:
        last = next((e for e in reversed(store.events()) if e.type == "state"), None)
        if last is not None:
            emit(last.model_dump(mode="json"))
        return store, None
    if row.status == JobStatus.running:  # the worker before this one was lost
        why = "the last worker stopped"
        move = state.requeue(job_id, row.status, why, row.last_checkpoint_step)
        row = store.apply(row, move, recorded=retried)
    row = store.apply(row, state.claim(job_id, row.status, row.attempts, row.started_at))
    store.attempt = row.attempts
    return store, row


def refuse_unfit(store: AttemptStore, preflight: Callable[[], None] | None) -> Job | None:
    """Run ``preflight``; if it raises an FnbError, end the job failed with that error (its
    ``reason``: ``unfit_worker``) and return it. None: go ahead and train."""
    if preflight is None:
        return None
    try:
        preflight()
    except FnbError as exc:
        log.error("this worker cannot run the job: %s", exc.message)
        error = {**exc.to_body()["error"], "reason": "unfit_worker"}
        return store.finish(JobStatus.failed, reason="unfit_worker", error=error)
    return None


def volume_jobs_root(settings: Settings, volume: Path | None = None) -> Path:
    """Job folders: on the network volume when one is mounted, unless FNB_JOBS_DIR says."""
    from fnbundle.runpod_worker import VOLUME

    volume = volume or VOLUME
    if "jobs_dir" not in settings.model_fields_set and volume.is_dir():
        return volume / "fnbundle" / "jobs"
    return settings.jobs_root


def run_volume_job(
    payload: dict[str, Any],
    settings: Settings,
    *,
    gpu: str | None = None,
    emit: Callable[[dict[str, Any]], None] = lambda _event: None,
    stop: threading.Event | None = None,
    preflight: Callable[[], None] | None = None,
) -> Job | None:
    """One run of a job input: claim, train (resuming from the volume), write the outcome,
    send the webhook. Bad input raises its FnbError before anything is written; a
    ``preflight`` that raises one (no usable GPU) fails the claimed job before training."""
    store, row = open_volume_job(
        payload, settings, volume_jobs_root(settings), gpu=gpu, emit=emit, stop=stop
    )
    if row is None:
        return None
    try:
        finished = refuse_unfit(store, preflight) or Attempt(settings, row, store).run(
            store.checkpoints
        )
    except LostJob as exc:
        log.warning("job %s: stopping without an outcome: %s", row.id, exc)
        return None
    if finished is not None:
        deliver_webhook(settings, finished)
    return finished
