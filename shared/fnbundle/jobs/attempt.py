"""One attempt of one training job, whatever runs it: the stop checks, the mapping from
trainer events to job events, and the outcome.

The runtime supplies an :class:`AttemptStore` (where the job's state lives: the local
SQLite row, a ``modal.Dict``, files on a RunPod network volume) and a checkpoint folder on
storage that outlives the worker; :meth:`Attempt.run` does the rest.

Key rules:

* Stopping is cooperative: ``should_stop`` answers ``cancelled`` (the store's flag, read at
  most every :data:`POLL_S`), ``timed_out`` (the deadline, counting execution time of
  earlier attempts) or ``stopped_budget`` (cost of all attempts,
  :class:`~fnbundle.platforms.estimates.BudgetTracker`); the trainer saves a checkpoint and raises
  TrainingStopped. A store raises :class:`~fnbundle.jobs.schema.LostJob` when the job is no
  longer this attempt's; the attempt then ends without writing anything more.
* A resumed attempt repeats the steps since its checkpoint; their events are not written
  again, so a job's ``step`` (and epoch, checkpoint) never goes backwards in its events.
* Every complete checkpoint is reported to the store (``checkpointed``) before training
  goes on, so a runtime that must publish it (a Modal Volume commit) does so in time.
* Outcomes: TrainResult -> succeeded; TrainingStopped -> its reason; a diverged loss ->
  failed ``{"type": "training_failed", "reason": "diverged"}``; another FnbError -> failed
  with its body; anything else -> failed ``internal_error`` (the traceback goes to the log).
  The webhook is the caller's to send, with the finished job this returns.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from fnbundle.errors import FnbError, TrainingStopped, error_body
from fnbundle.jobs.schema import Job, JobEvent, JobRow, JobStatus, LostJob, Progress
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.jobs.attempt")

POLL_S = 0.5  # seconds between reads of the cancel flag; should_stop runs every step
WEBHOOK_ATTEMPTS = 5  # requests per terminal event, the first included
METRIC_SKIP = {"type", "epoch", "step", "eval_loss", "train_loss"}


class AttemptStore(Protocol):
    """Where one attempt reads and writes its job. Every method may raise LostJob."""

    def events(self) -> list[JobEvent]:
        """The job's events so far (earlier attempts included)."""
        ...

    def write(self, events: Sequence[tuple[str, dict[str, Any]]], **fields: Any) -> None:
        """Append ``events`` and set job ``fields`` (progress, metrics, cost_usd, run_s,
        last_checkpoint_step), in one write where the store can."""
        ...

    def cancel_requested(self) -> bool: ...

    def checkpointed(self, step: int) -> None:
        """A complete checkpoint of ``step`` is in the checkpoint folder."""
        ...

    def finish(self, to: JobStatus, *, reason: str | None, **fields: Any) -> Job | None:
        """The terminal move with its ``state`` event; None if the job is no longer ours."""
        ...


def deliver_webhook(settings: Settings, job: Job) -> None:
    """POST a finished job to its webhook_url, once per (job, status, attempt). Never raises."""
    if not job.webhook_url:
        return
    if not settings.webhook_secret:
        log.warning("job %s: no FNB_WEBHOOK_SECRET here; its webhook is not sent", job.id)
        return
    try:
        from fnbundle.webhooks import SqliteSentLog, deliver

        deliver(
            job.webhook_url,
            job.model_dump(mode="json"),
            secret=settings.webhook_secret.encode(),
            event_id=f"{job.id}:{job.status.value}:{job.attempts}",
            attempts=WEBHOOK_ATTEMPTS,
            allow_private=settings.webhook_allow_private,
            allowed_hosts=settings.webhook_allowed_hosts,
            sent=SqliteSentLog(settings.jobs_root / "webhooks.sqlite3"),
        )
    except Exception:
        log.exception("webhook for job %s not delivered", job.id)


class Attempt:
    """One attempt of one job: the control callbacks, the event mapping, the outcome."""

    def __init__(self, settings: Settings, job: JobRow, store: AttemptStore):
        from fnbundle.platforms.estimates import BudgetTracker

        self.settings, self.job, self.store = settings, job, store
        self.started = time.monotonic()
        estimate = job.estimate or {}
        self.estimate = estimate
        self.budget = BudgetTracker(
            job.budget_usd,
            float(estimate.get("usd_per_s") or 0.0),
            already_spent_usd=job.cost_usd,
        )
        timeout = job.timeout_s or settings.jobs_timeout_s
        self.deadline = time.time() + timeout - job.run_s
        self.run_s_before = job.run_s
        self.next_poll = 0.0
        self.cancelled = False
        # High-water marks of what the job's events already say (earlier attempts).
        self.progress = job.progress.model_copy()
        self.seen_epoch, self.seen_eval, self.seen_checkpoint = self._seen(store.events())
        self.total_steps = job.progress.total_steps
        self.epochs = int(job.params.get("epochs") or 1)
        self.first_step: int | None = None  # this attempt's first step, for throughput
        self.trained_until: float | None = None  # monotonic time of the last eval
        self.last_step = job.last_checkpoint_step or 0
        self._models_before = job.progress.step  # models an earlier attempt finished

    @staticmethod
    def _seen(events: list[JobEvent]) -> tuple[int, int, int]:
        epoch = evaluated = checkpoint = 0
        for event in events:
            if event.type == "epoch":
                epoch = max(epoch, int(event.data.get("epoch", 0)))
            elif event.type == "eval_metric":
                evaluated = max(evaluated, int(event.data.get("epoch", 0)))
            elif event.type == "checkpoint":
                checkpoint = max(checkpoint, int(event.data.get("step", 0)))
        return epoch, evaluated, checkpoint

    # --- control -------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _totals(self) -> dict[str, Any]:
        return {
            "cost_usd": round(self.budget.cost_usd, 6),
            "run_s": round(self.run_s_before + self.elapsed(), 3),
        }

    def _write(self, events: list[tuple[str, dict[str, Any]]], **fields: Any) -> None:
        self.store.write(events, **self._totals(), **fields)

    def should_stop(self) -> str | None:
        now = time.monotonic()
        warnings = self.budget.update(self.elapsed())
        if warnings:
            self._write(
                [("cost_usd", {k: v for k, v in w.items() if k != "type"}) for w in warnings]
            )
        if now >= self.next_poll:
            self.next_poll = now + POLL_S
            self.cancelled = self.store.cancel_requested()
        if self.cancelled:
            return "cancelled"
        if time.time() >= self.deadline:
            return "timed_out"
        if self.budget.exhausted:
            return "stopped_budget"
        return None

    # --- events --------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":
            self.total_steps = int(event["total_steps"])
            self.progress.total_steps = self.total_steps
            self._write(
                [("log", {"level": "info", "message": self._start_message(event)})],
                progress=self.progress,
            )
        elif kind == "step":
            self._on_step(event)
        elif kind == "eval":
            self.trained_until = time.monotonic()
            epoch = int(event.get("epoch", 0))
            if epoch > self.seen_eval:
                self.seen_eval = epoch
                metrics = {
                    k: v
                    for k, v in event.items()
                    if k not in METRIC_SKIP and isinstance(v, int | float)
                }
                step = event.get("step")
                self._write(
                    [
                        ("eval_metric", {"epoch": epoch, "step": step, "name": k, "value": v})
                        for k, v in metrics.items()
                    ],
                    metrics={**metrics, "eval_loss": event.get("eval_loss"), "epoch": epoch},
                )
        elif kind == "epoch":
            epoch = int(event.get("epoch", 0))
            if epoch > self.seen_epoch:
                self.seen_epoch = epoch
                data = {k: v for k, v in event.items() if k != "type"}
                self._write([("epoch", data)])
        elif kind == "checkpoint":
            step = int(event["step"])
            if step > self.seen_checkpoint:
                self.seen_checkpoint = step
                self._write(
                    [("checkpoint", {"step": step, "epoch": event.get("epoch")})],
                    last_checkpoint_step=step,
                )
            else:
                self._write([], last_checkpoint_step=step)
            self.store.checkpointed(step)
        elif kind == "model":
            self._on_model(event)
        elif kind == "log":
            message = str(event.get("message", ""))
            self._write([("log", {"level": event.get("level", "info"), "message": message})])
        elif kind == "published":
            message = f"published model {event.get('model_id')}"
            self._write([("log", {"level": "info", "message": message})])

    def _start_message(self, event: dict[str, Any]) -> str:
        return (
            f"attempt {self.job.attempts}: {event.get('train_examples')} training and "
            f"{event.get('eval_examples')} validation examples, {event.get('total_steps')} steps"
        )

    def _on_step(self, event: dict[str, Any]) -> None:
        step = int(event["step"])
        if self.first_step is None:
            self.first_step = step
        total = int(event.get("total_steps") or self.total_steps or 0) or None
        self.last_step = step
        if step <= self.progress.step:
            return  # repeated after a resume: already reported
        eta = event.get("eta_s")
        per_epoch = (total / self.epochs) if total else None
        self.progress = Progress(
            step=step,
            total_steps=total,
            epoch=round(step / per_epoch, 3) if per_epoch else float(event.get("epoch", 0)),
            loss=event.get("loss"),
            eta_s=eta,
            fraction=round(step / total, 4) if total else 0.0,
        )
        data = {
            "step": step,
            "total_steps": total,
            "epoch": event.get("epoch"),
            "loss": event.get("loss"),
            "lr": event.get("lr", event.get("learning_rate")),
            "eta_s": eta,
            "cost_usd": round(self.budget.cost_usd, 6),
        }
        if event.get("tokens_per_s") is not None:  # a language model's throughput
            data["tokens_per_s"] = event["tokens_per_s"]
        self._write([("step", data)], progress=self.progress)

    def _on_model(self, event: dict[str, Any]) -> None:
        """One model of a run that trains several: its event, and the progress in models
        (a retry refits the models an earlier attempt finished; those are not reported
        again)."""
        index, of = int(event["index"]), int(event["of"])
        if index <= self._models_before:
            return
        if event.get("state") != "training":
            done_now = index - self._models_before
            self.progress = Progress(
                step=index,
                total_steps=of,
                epoch=0.0,
                loss=None,
                eta_s=round(self.elapsed() / done_now * (of - index), 1),
                fraction=round(index / of, 4),
            )
        data = {k: v for k, v in event.items() if k != "type" and v is not None}
        self._write([("model", data)], progress=self.progress)

    def record_throughput(self) -> None:
        """Feed what this attempt measured into the cost model's calibration."""
        est = self.estimate
        if self.first_step is None or self.trained_until is None or not est.get("steps"):
            return
        steps = self.last_step - self.first_step + 1
        seconds = self.trained_until - self.started
        if steps <= 0 or seconds <= 0:
            return
        try:
            from fnbundle.platforms.estimates import Calibration

            tokens = round(float(est["tokens"]) * steps / float(est["steps"]))
            Calibration.for_settings(self.settings).record(
                str(est["gpu"]), tokens, seconds, float(est["flops_per_token"])
            )
        except Exception:
            log.warning("could not record throughput for job %s", self.job.id, exc_info=True)

    # --- the attempt ---------------------------------------------------------------

    def finish(self, to: JobStatus, *, reason: str | None = None, **fields: Any) -> Job | None:
        """Write the outcome, unless the job is no longer this attempt's."""
        return self.store.finish(
            to, reason=reason, **self._totals(), progress=self.progress, **fields
        )

    def run(self, checkpoint_dir: Path) -> Job | None:
        """Train (resuming from ``checkpoint_dir``) and write the outcome; the finished job,
        or None when it was no longer ours to finish. LostJob propagates."""
        if self.deadline <= time.time():
            return self.finish(JobStatus.timed_out, reason="timed_out")
        from fnbundle.tasks import REGISTRY
        from fnbundle.training.control import STOP_REASONS, TrainControl
        from fnbundle.training.events import Diverged

        job = self.job
        task = REGISTRY.training_task(job.task)
        control = TrainControl(
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=self.settings.jobs_checkpoint_every,
            should_stop=self.should_stop,
        )
        try:
            params = task.params_model.model_validate(job.params)
            result = task.train(params, self.settings, self.on_event, control)
        except LostJob:
            raise
        except TrainingStopped as exc:
            # A reason the control does not know stops the job as a cancel would.
            status = JobStatus(exc.reason) if exc.reason in STOP_REASONS else JobStatus.cancelled
            error = None
            if status != JobStatus.cancelled:
                error = {"type": status.value, "message": exc.message}
            return self.finish(status, reason=exc.reason, metrics=exc.metrics or {}, error=error)
        except Diverged as exc:  # by type: the message is for people
            error = {**exc.to_body()["error"], "reason": exc.reason}
            return self.finish(JobStatus.failed, reason=exc.reason, error=error)
        except FnbError as exc:
            return self.finish(JobStatus.failed, reason=exc.type, error=exc.to_body()["error"])
        except Exception:
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            body = error_body("internal_error", "Internal error; the job's log has the details.")
            return self.finish(JobStatus.failed, reason="internal_error", error=body["error"])
        self.record_throughput()
        self.progress.fraction = 1.0
        self.progress.eta_s = 0.0
        return self.finish(
            JobStatus.succeeded,
            model_id=result.model_id,
            metrics=result.metrics,
            last_checkpoint_step=None if self.seen_checkpoint == 0 else self.seen_checkpoint,
        )
