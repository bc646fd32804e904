"""One training job in its own OS process: ``python -m fnbundle.jobs.worker --job <id>``.

The scheduler (:mod:`fnbundle.jobs.manager`) claims a queued job (status ``running``,
``attempts + 1``) and starts this module with the settings in ``FNB_*`` variables
(:func:`settings_env`). Killing the process frees every byte the training took.

Key rules:

* The database row is the only channel: the worker reads its job, polls ``cancel_requested``
  (at most every :data:`POLL_S`), and writes progress and events. Every write is guarded by
  ``status = 'running' AND worker_pid = <this pid>``: a worker whose job was handed on
  (requeued, finished elsewhere) stops without touching it.
* Stopping is cooperative first: ``should_stop`` answers ``cancelled``, ``timed_out`` (the
  deadline, counting execution time of earlier attempts) or ``stopped_budget`` (cost of all
  attempts, :class:`~fnbundle.costs.BudgetTracker`); the trainer saves a checkpoint and
  raises TrainingStopped. SIGTERM and SIGKILL from the scheduler are the fallback; a worker
  that dies without writing an outcome is resumed from its newest complete checkpoint.
* A resumed attempt repeats the steps since that checkpoint; their events are not written
  again, so a job's ``step`` (and epoch, checkpoint) never goes backwards in its events.
* Outcomes: TrainResult -> succeeded; TrainingStopped -> its reason; a diverged loss ->
  failed ``{"type": "training_failed", "reason": "diverged"}``; another FnbError -> failed
  with its body; anything else -> failed ``internal_error`` (the traceback goes to the
  job's ``worker.log`` only). Then the webhook, outside any transaction.
* The worker exits when its parent (the gateway) is gone: the job stays ``running`` and the
  next manager start resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import NoDecode

from fnbundle.errors import Conflict, FnbError, TrainingFailed, TrainingStopped, error_body
from fnbundle.jobs.db import JobDB, JobRow, LostJob
from fnbundle.jobs.schema import Job, JobStatus, Progress
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.jobs.worker")

POLL_S = 0.5  # seconds between reads of the cancel flag; should_stop runs every step
STOP_REASONS = {
    "cancelled": JobStatus.cancelled,
    "timed_out": JobStatus.timed_out,
    "stopped_budget": JobStatus.stopped_budget,
}
WEBHOOK_ATTEMPTS = 5  # requests per terminal event, the first included
METRIC_SKIP = {"type", "epoch", "step", "eval_loss", "train_loss"}


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_root / job_id


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    return job_dir(settings, job_id) / "checkpoints"


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every setting as ``FNB_<NAME>``,
    so a child process builds the same :class:`Settings` with ``Settings()``."""
    env = dict(os.environ if base is None else base)
    prefix = str(Settings.model_config.get("env_prefix", "FNB_"))
    for name, info in Settings.model_fields.items():
        key = f"{prefix}{name}".upper()
        value = getattr(settings, name)
        env.pop(key, None)
        if value is None:
            continue
        if isinstance(value, list | tuple):
            if any(isinstance(m, NoDecode) or m is NoDecode for m in info.metadata):
                env[key] = ",".join(str(v) for v in value)
            else:
                env[key] = json.dumps([str(v) for v in value])
        elif isinstance(value, dict):
            env[key] = json.dumps(value)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, Path):
            env[key] = str(value.expanduser().resolve())
        else:
            env[key] = str(value)
    return env


def deliver_webhook(settings: Settings, job: Job) -> None:
    """POST a finished job to its webhook_url, once per (job, status, attempt). Never raises."""
    if not job.webhook_url:
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


class _Run:
    """One attempt of one job: the control callbacks and the event mapping."""

    def __init__(self, settings: Settings, db: JobDB, job: JobRow):
        from fnbundle.costs import BudgetTracker

        self.settings, self.db, self.job = settings, db, job
        self.pid = os.getpid()
        self.parent = os.getppid()
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
        self.seen_epoch, self.seen_eval, self.seen_checkpoint = self._seen(job.id)
        self.total_steps = job.progress.total_steps
        self.epochs = int(job.params.get("epochs") or 1)
        self.first_step: int | None = None  # this attempt's first step, for throughput
        self.trained_until: float | None = None  # monotonic time of the last eval
        self.last_step = job.last_checkpoint_step or 0

    def _seen(self, job_id: str) -> tuple[int, int, int]:
        epoch = evaluated = checkpoint = 0
        for event in self.db.events(job_id):
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

    def _write(self, events: list[tuple[str, dict[str, Any]]], **fields: Any) -> None:
        self.db.update(
            self.job.id,
            worker_pid=self.pid,
            events=events,
            cost_usd=round(self.budget.cost_usd, 6),
            run_s=round(self.run_s_before + self.elapsed(), 3),
            **fields,
        )

    def should_stop(self) -> str | None:
        if os.getppid() != self.parent:
            raise LostJob("the gateway that started this worker is gone")
        now = time.monotonic()
        warnings = self.budget.update(self.elapsed())
        if warnings:
            self._write(
                [("cost_usd", {k: v for k, v in w.items() if k != "type"}) for w in warnings]
            )
        if now >= self.next_poll:
            self.next_poll = now + POLL_S
            row = self.db.get(self.job.id)
            if row.status != JobStatus.running or row.worker_pid != self.pid:
                raise LostJob(f"job {self.job.id} is {row.status.value}, not ours")
            self.cancelled = row.cancel_requested
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
        self._write([("step", data)], progress=self.progress)

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
            from fnbundle.costs import Calibration

            tokens = round(float(est["tokens"]) * steps / float(est["steps"]))
            Calibration.for_settings(self.settings).record(
                str(est["gpu"]), tokens, seconds, float(est["flops_per_token"])
            )
        except Exception:
            log.warning("could not record throughput for job %s", self.job.id, exc_info=True)


def _finish(run: _Run, to: JobStatus, *, reason: str | None = None, **fields: Any) -> JobRow | None:
    """Write the outcome, unless the job is no longer this worker's."""
    try:
        return run.db.transition(
            run.job.id,
            to,
            from_=[JobStatus.running],
            owner=run.pid,
            reason=reason,
            cost_usd=round(run.budget.cost_usd, 6),
            run_s=round(run.run_s_before + run.elapsed(), 3),
            progress=run.progress,
            **fields,
        )
    except Conflict as exc:
        log.warning("outcome %s of job %s not written: %s", to.value, run.job.id, exc)
        return None


def _train(settings: Settings, run: _Run) -> JobRow | None:
    from fnbundle.training.control import TrainControl
    from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

    job = run.job
    control = TrainControl(
        checkpoint_dir=checkpoint_dir(settings, job.id),
        checkpoint_every=settings.jobs_checkpoint_every,
        should_stop=run.should_stop,
    )
    try:
        params = TrainClassifierParams.model_validate(job.params)
        result = train_classifier(params, settings, run.on_event, control)
    except LostJob:
        raise
    except TrainingStopped as exc:
        status = STOP_REASONS.get(exc.reason, JobStatus.cancelled)
        error = None
        if status != JobStatus.cancelled:
            error = {"type": status.value, "message": exc.message}
        return _finish(run, status, reason=exc.reason, metrics=exc.metrics or {}, error=error)
    except TrainingFailed as exc:
        error = exc.to_body()["error"]
        if exc.message.startswith("diverged"):
            error["reason"] = "diverged"
        return _finish(run, JobStatus.failed, reason=error.get("reason"), error=error)
    except FnbError as exc:
        return _finish(run, JobStatus.failed, reason=exc.type, error=exc.to_body()["error"])
    except Exception:
        log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        body = error_body("internal_error", "Internal error; the job's worker.log has the details.")
        return _finish(run, JobStatus.failed, reason="internal_error", error=body["error"])
    run.record_throughput()
    run.progress.fraction = 1.0
    run.progress.eta_s = 0.0
    return _finish(
        run,
        JobStatus.succeeded,
        model_id=result.model_id,
        metrics=result.metrics,
        last_checkpoint_step=None if run.seen_checkpoint == 0 else run.seen_checkpoint,
    )


def run_job(settings: Settings, job_id: str) -> int:
    """Run one attempt of ``job_id``; the exit code is 0 when an outcome was written."""
    db = JobDB(settings.jobs_root)
    pid = os.getpid()
    if not db.own(job_id, pid):
        log.warning("job %s is not running or belongs to another worker; nothing to do", job_id)
        return 0
    job = db.get(job_id)
    run = _Run(settings, db, job)
    db.update(job_id, worker_pid=pid, deadline=run.deadline)
    if run.deadline <= time.time():
        finished = _finish(run, JobStatus.timed_out, reason="timed_out")
    else:
        try:
            finished = _train(settings, run)
        except LostJob as exc:
            log.warning("job %s: stopping without an outcome: %s", job_id, exc)
            return 3
    if finished is not None:
        deliver_webhook(settings, finished.public())
    return 0


def _terminate(signum: int, _frame: Any) -> None:
    # Unwind (temporary folders are removed) and exit without an outcome: the scheduler
    # decides what a stopped worker means (resume, cancelled, timed_out).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnbundle.jobs.worker")
    parser.add_argument("--job", required=True, help="job id")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{args.job} pid {os.getpid()}] %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _terminate)
    settings = Settings()
    return run_job(settings, args.job)


if __name__ == "__main__":
    sys.exit(main())
