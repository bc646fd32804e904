"""The local job runtime: :class:`JobManager` is the job service
(:mod:`fnbundle.jobs.service`) over the SQLite store (:mod:`fnbundle.jobs.db`) and
:class:`LocalWorkers`, a scheduler that runs each job in its own worker process
(:mod:`fnbundle.jobs.worker`). The HTTP routes, SSE and the CLI sit on :class:`JobManager`.

Key rules:

* Jobs start oldest first, at most ``max_running`` at once. The scheduler thread claims a
  job (queued -> running, attempt + 1) before it starts the process, so a job never runs
  twice and a cancelled queued job never starts.
* A worker that exits without writing an outcome (killed, out of memory, crashed) sends
  its job back to ``queued`` with a log event, and it resumes from its newest complete
  checkpoint, up to ``jobs_max_attempts`` worker starts; then it fails. If a cancel was
  requested or the deadline passed, the job ends ``cancelled`` / ``timed_out`` instead.
* Cancel and the time limit are cooperative first (the worker polls its row), then
  SIGTERM after ``jobs_cancel_grace_s``, then SIGKILL after as long again.
* ``stop()`` ends this process's workers; their jobs stay ``running`` in the database and
  ``start()`` (this manager or a new one on the same ``jobs_dir``) resumes them. One manager
  per ``jobs_dir``: ``start()`` ends any worker of the folder it finds still alive.
* Submitting checks the job as every backend does (:mod:`fnbundle.jobs.submit`: a 422
  naming ``params.<field>``, the webhook target, the cost estimate, so an unreadable
  dataset or unknown base fails here, not in a worker). The same idempotency key returns
  the same job (with ``created=False``), whatever the rest of the request says.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fnbundle.errors import Conflict
from fnbundle.jobs import state
from fnbundle.jobs.db import JobDB
from fnbundle.jobs.schema import Job, JobRow, JobStatus, JobSubmit
from fnbundle.jobs.service import JobService
from fnbundle.jobs.stores import SqliteStore
from fnbundle.jobs.submit import new_job
from fnbundle.jobs.worker import job_dir, settings_env
from fnbundle.settings import Settings

log = logging.getLogger("fnbundle.jobs")

TICK_S = 0.2  # seconds between scheduler passes (also woken at once by submit and cancel)
STOP_WAIT_S = 5.0  # seconds stop() waits after SIGTERM before SIGKILL
WORKER_MODULE = "fnbundle.jobs.worker"


@dataclass
class _Worker:
    job_id: str
    proc: subprocess.Popen[bytes]
    started: float  # monotonic
    sigterm_at: float | None = None  # monotonic time SIGTERM was sent
    sigkill_at: float | None = None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        stat = ""
    if stat:
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_worker_of(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is a live worker process for ``job_id`` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid) and sys.platform != "linux"
    return WORKER_MODULE.encode() in cmdline and job_id.encode() in cmdline


class LocalWorkers:
    """The local :class:`~fnbundle.jobs.service.Launcher`: a scheduler thread that claims
    queued jobs and runs each in its own worker process. A launch or a cancel only wakes it."""

    def __init__(self, settings: Settings, db: JobDB, max_running: int):
        self.settings = settings
        self.db = db
        self.max_running = max_running
        self.service: JobService | None = None  # set by JobManager: the webhooks of _end
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()  # guards _workers
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- Launcher --------------------------------------------------------------------

    def new_job(self, req: JobSubmit) -> Job:
        return new_job(req, self.settings)

    def launch(self, job: JobRow, *, retry: bool = False) -> str | None:
        self.wake()
        return None

    def cancel(self, job: JobRow, handle: str | None, *, running: bool) -> None:
        self.wake()  # the scheduler signals a worker that ignores the request

    def wake(self) -> None:
        """Run a scheduler pass now (a job was queued, or the limits changed)."""
        self._wake.set()

    def observe(self, service: JobService, job: JobRow, *, stream: bool = False) -> JobRow:
        return job  # the scheduler watches its own workers

    def start(self) -> None:
        """Recover jobs left running by an earlier manager, then start scheduling."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._recover()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="fnbundle-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling and end this process's workers; their jobs stay ``running``
        and the next ``start()`` resumes them from their checkpoints."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        live = [w for w in workers if w.proc.poll() is None]
        for w in live:
            w.proc.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        if live:
            log.info("stopped %d worker(s); their jobs resume at the next start", len(live))
        self.db.close()

    def _recover(self) -> None:
        """Jobs ``running`` without a live worker of ours go back to the queue."""
        for job in self.db.find(status=[JobStatus.running], limit=1_000_000):
            with self._lock:
                if job.id in self._workers:
                    continue
            pid = job.worker_pid
            if pid is not None and _is_worker_of(pid, job.id):
                log.warning("ending worker %d of job %s left by an earlier manager", pid, job.id)
                self._kill_foreign(pid)
            self._requeue(job, "the gateway restarted")

    @staticmethod
    def _kill_foreign(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_WAIT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- scheduler -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("job scheduler pass failed; trying again")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            code = w.proc.poll()
            if code is None:
                self._enforce(w)
            else:
                with self._lock:
                    self._workers.pop(w.job_id, None)
                self._after_exit(w, code)
        while not self._stopping.is_set():
            with self._lock:
                if len(self._workers) >= self.max_running:
                    return
            job = self.db.claim_next()
            if job is None:
                return
            self._spawn(job)

    def _spawn(self, job: JobRow) -> None:
        folder = job_dir(self.settings, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with (folder / "worker.log").open("ab") as logf:
                proc = subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, "--job", job.id],
                    env=settings_env(self.settings),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C of the gateway reaches it through stop()
                )
        except OSError as exc:
            log.error("cannot start a worker for job %s: %s", job.id, exc)
            self._requeue(job, f"the worker could not start ({exc})")
            return
        self.db.own(job.id, proc.pid)
        # The clock runs from here, so a worker stuck before it reads its job is stopped too.
        timeout = job.timeout_s or self.settings.jobs_timeout_s
        self.db.update(job.id, deadline=time.time() + timeout - job.run_s)
        with self._lock:
            self._workers[job.id] = _Worker(job.id, proc, time.monotonic())
        log.info("job %s: attempt %d in worker %d", job.id, job.attempts, proc.pid)

    def _enforce(self, w: _Worker) -> None:
        """Signal a worker that ignores a cancel or its deadline for too long."""
        job = self.db.get(w.job_id)
        if job.status != JobStatus.running:
            return  # its outcome is written; the process is on its way out
        now = time.time()
        due = [t for t in (job.cancel_requested_at, job.deadline) if t is not None and t <= now]
        if not due:
            return
        overdue = now - min(due)
        grace = self.settings.jobs_cancel_grace_s
        mono = time.monotonic()
        if overdue >= 2 * grace and w.sigkill_at is None:
            log.warning("job %s: worker %d did not stop; SIGKILL", job.id, w.proc.pid)
            w.proc.kill()
            w.sigkill_at = mono
        elif overdue >= grace and w.sigterm_at is None:
            log.warning("job %s: worker %d did not stop; SIGTERM", job.id, w.proc.pid)
            w.proc.terminate()
            w.sigterm_at = mono

    def _after_exit(self, w: _Worker, code: int) -> None:
        job = self.db.get(w.job_id)
        if job.status != JobStatus.running or job.worker_pid not in (None, w.proc.pid):
            return  # the worker wrote its outcome (or the job is someone else's now)
        how = f"exit code {code}" if code >= 0 else f"signal {-code}"
        if job.cancel_requested:
            self._end(job, JobStatus.cancelled, "cancelled", None)
        elif job.deadline is not None and time.time() >= job.deadline:
            message = f"The job ran past its time limit of {job.timeout_s:g} s."
            self._end(
                job, JobStatus.timed_out, "timed_out", {"type": "timed_out", "message": message}
            )
        elif job.attempts - job.retry_base >= self.settings.jobs_max_attempts:
            message = (
                f"The worker died {job.attempts - job.retry_base} times (last: {how}); "
                "the job's worker.log has the details."
            )
            self._end(
                job, JobStatus.failed, "worker_died", {"type": "worker_died", "message": message}
            )
        else:
            self._requeue(job, f"worker died ({how})")

    def _requeue(self, job: JobRow, why: str) -> None:
        try:
            move = state.requeue(job.id, job.status, why, job.last_checkpoint_step)
            self.db.apply(job.id, move, expect=JobStatus.running)
        except Conflict:
            return
        self._wake.set()

    def _end(self, job: JobRow, to: JobStatus, reason: str, error: dict[str, str] | None) -> None:
        if self.service is not None:
            self.service.end(job.id, to, reason, error)


class JobManager(JobService):
    """Training jobs on this machine: the job service over the SQLite store and the local
    worker processes. Cheap to construct; ``start()`` begins the work."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_running: int | None = None,
        max_queued: int | None = None,
    ):
        # max_running 0: record jobs but start none (a gateway that only answers for them)
        running = settings.jobs_max_running if max_running is None else max_running
        self.db = JobDB(settings.jobs_root)
        self.workers = LocalWorkers(settings, self.db, running)
        super().__init__(
            settings,
            SqliteStore(self.db),
            self.workers,
            max_queued=settings.jobs_max_queued if max_queued is None else max_queued,
        )
        self.workers.service = self

    @property
    def max_running(self) -> int:
        return self.workers.max_running

    @property
    def _thread(self) -> threading.Thread | None:
        return self.workers._thread
