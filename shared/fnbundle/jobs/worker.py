"""One training job in its own OS process: ``python -m fnbundle.jobs.worker --job <id>``.

The scheduler (:mod:`fnbundle.jobs.manager`) claims a queued job (status ``running``,
``attempts + 1``) and starts this module with the settings in ``FNB_*`` variables
(:func:`settings_env`). Killing the process frees every byte the training took. The
attempt itself (stop checks, event mapping, outcomes) is :mod:`fnbundle.jobs.attempt`,
shared with Modal and RunPod; this module is its local store and process.

Key rules:

* The database row is the only channel: the worker reads its job, polls ``cancel_requested``
  (at most every :data:`~fnbundle.jobs.attempt.POLL_S`), and writes progress and events.
  Every write is guarded by ``status = 'running' AND worker_pid = <this pid>``: a worker
  whose job was handed on (requeued, finished elsewhere) stops without touching it.
* Stopping is cooperative first (cancel, deadline, budget: the trainer saves a checkpoint);
  SIGTERM and SIGKILL from the scheduler are the fallback; a worker that dies without
  writing an outcome is resumed from its newest complete checkpoint.
* An unexpected error fails the job ``internal_error``; its traceback goes to the job's
  ``worker.log`` only. The webhook is sent after the outcome, outside any transaction.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic_settings import NoDecode

from fnbundle.errors import Conflict
from fnbundle.jobs.attempt import Attempt, deliver_webhook
from fnbundle.jobs.db import JobDB
from fnbundle.jobs.schema import Job, JobEvent, JobStatus, LostJob
from fnbundle.logs import configure_logging
from fnbundle.settings import Settings

__all__ = ["DbStore", "checkpoint_dir", "deliver_webhook", "job_dir", "run_job", "settings_env"]

log = logging.getLogger("fnbundle.jobs.worker")


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


class DbStore:
    """The attempt's store: this job's row in the local database, guarded by this pid."""

    def __init__(self, db: JobDB, job_id: str):
        self.db, self.job_id = db, job_id
        self.pid = os.getpid()
        self.parent = os.getppid()

    def events(self) -> list[JobEvent]:
        return self.db.events(self.job_id)

    def write(self, events: Sequence[tuple[str, dict[str, Any]]], **fields: Any) -> None:
        self.db.update(self.job_id, worker_pid=self.pid, events=events, **fields)

    def cancel_requested(self) -> bool:
        if os.getppid() != self.parent:
            raise LostJob("the gateway that started this worker is gone")
        row = self.db.get(self.job_id)
        if row.status != JobStatus.running or row.worker_pid != self.pid:
            raise LostJob(f"job {self.job_id} is {row.status.value}, not ours")
        return row.cancel_requested

    def checkpointed(self, step: int) -> None:
        """The checkpoint folder is on this machine's disk: nothing to publish."""

    def finish(self, to: JobStatus, *, reason: str | None, **fields: Any) -> Job | None:
        try:
            row = self.db.transition(
                self.job_id, to, from_=[JobStatus.running], owner=self.pid, reason=reason, **fields
            )
        except Conflict as exc:
            log.warning("outcome %s of job %s not written: %s", to.value, self.job_id, exc)
            return None
        return row.public()


def run_job(settings: Settings, job_id: str) -> int:
    """Run one attempt of ``job_id``; the exit code is 0 when an outcome was written."""
    db = JobDB(settings.jobs_root)
    pid = os.getpid()
    if not db.own(job_id, pid):
        log.warning("job %s is not running or belongs to another worker; nothing to do", job_id)
        return 0
    attempt = Attempt(settings, db.get(job_id), DbStore(db, job_id))
    db.update(job_id, worker_pid=pid, deadline=attempt.deadline)
    try:
        finished = attempt.run(checkpoint_dir(settings, job_id))
    except LostJob as exc:
        log.warning("job %s: stopping without an outcome: %s", job_id, exc)
        return 3
    if finished is not None:
        deliver_webhook(settings, finished)
    return 0


def _terminate(signum: int, _frame: Any) -> None:
    # Unwind (temporary folders are removed) and exit without an outcome: the scheduler
    # decides what a stopped worker means (resume, cancelled, timed_out).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fnbundle.jobs.worker")
    parser.add_argument("--job", required=True, help="job id")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(
        settings.log_format,
        text_format=f"%(asctime)s %(levelname)s [{args.job} pid {os.getpid()}] %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _terminate)
    return run_job(settings, args.job)


if __name__ == "__main__":
    sys.exit(main())
