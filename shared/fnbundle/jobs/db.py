"""The local job store: one SQLite file shared by the gateway and its worker processes.

Key rules:

* A job's ``status`` changes only through :meth:`JobDB.transition` (and the scheduler's
  :meth:`JobDB.claim_next`): one ``UPDATE ... WHERE status IN (<allowed sources>)`` that
  enforces :data:`~fnbundle.jobs.schema.TRANSITIONS`, and the ``state`` event that records
  it, in the same transaction. A move the table does not allow is a
  :class:`~fnbundle.errors.Conflict`; two racing moves cannot both win.
* Every write is ``BEGIN IMMEDIATE``: writers queue on the database lock (``busy_timeout``)
  instead of failing when a read transaction tries to upgrade. WAL lets readers (the API,
  ``follow``) run while a worker writes.
* An idempotency key maps to one job for ever: the lookup and the insert happen under the
  write lock, and the column is ``UNIQUE`` besides, so parallel submits from threads or
  processes get the same job, and exactly one of them ``created=True``.
* An event's ``seq`` is 1, 2, 3, ... per job, allocated under the write lock, so replaying
  ``after=<seq>`` never skips or repeats an event.
* One connection per thread and per process (a forked child never reuses its parent's).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fnbundle.errors import Conflict, NotFound, QueueFull
from fnbundle.jobs import state
from fnbundle.jobs.schema import TERMINAL, Job, JobEvent, JobRow, JobStatus, LostJob, queued_event

DB_NAME = "jobs.sqlite3"
BUSY_TIMEOUT_MS = 60_000  # how long a writer waits for the lock before giving up
QUEUE_WAIT_DEFAULT_S = 30.0  # Retry-After when nothing running tells us better
QUEUE_WAIT_MAX_S = 3600.0  # seconds; a client should come back within the hour anyway

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order: oldest first, newest first
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,                   -- JSON
    idempotency_key TEXT UNIQUE,
    budget_usd REAL,
    gpu TEXT,
    webhook_url TEXT,
    timeout_s REAL,
    estimate TEXT,                          -- JSON
    progress TEXT NOT NULL DEFAULT '{}',    -- JSON (schema.Progress)
    metrics TEXT NOT NULL DEFAULT '{}',     -- JSON
    cost_usd REAL NOT NULL DEFAULT 0,       -- all attempts together
    run_s REAL NOT NULL DEFAULT 0,          -- execution time counted against timeout_s
    model_id TEXT,
    error TEXT,                             -- JSON {"type", "message", ...}
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_base INTEGER NOT NULL DEFAULT 0,  -- attempts when it was last retried
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    last_checkpoint_step INTEGER,
    worker_pid INTEGER,                     -- the process running it now, if any
    cancel_requested REAL,                  -- unix time of the request, NULL when none
    deadline REAL,                          -- unix time the running attempt must end by
    request_id TEXT                         -- X-Request-ID of the submitting request
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    data TEXT NOT NULL,                     -- JSON
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""

_JSON_COLUMNS = frozenset({"params", "estimate", "progress", "metrics", "error"})
# Columns a caller may set; ``status`` is not among them (see transition()).
_COLUMNS = frozenset(
    {
        "budget_usd",
        "gpu",
        "webhook_url",
        "timeout_s",
        "estimate",
        "progress",
        "metrics",
        "cost_usd",
        "run_s",
        "model_id",
        "error",
        "attempts",
        "retry_base",
        "started_at",
        "finished_at",
        "last_checkpoint_step",
        "worker_pid",
        "cancel_requested",
        "deadline",
    }
)
_CREATE_ONLY = frozenset({"params", "idempotency_key", "created_at", "request_id"})
# Columns added after the first release: (name, type), added to an older file on open.
_ADDED_COLUMNS = (("request_id", "TEXT"),)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS and value is not None:
        return json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _as_columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Job fields as columns: the ``cancel_requested`` column holds the request's time."""
    out = dict(fields)
    out.pop("cancel_requested", None)
    if "cancel_requested_at" in out:
        out["cancel_requested"] = out.pop("cancel_requested_at")
    return out


def _row_to_job(row: sqlite3.Row) -> JobRow:
    data: dict[str, Any] = dict(row)
    for column in _JSON_COLUMNS:
        if data.get(column) is not None:
            data[column] = json.loads(data[column])
    data["metrics"] = data.get("metrics") or {}
    data["progress"] = data.get("progress") or {}
    data["cancel_requested_at"] = data.pop("cancel_requested")
    data["cancel_requested"] = data["cancel_requested_at"] is not None
    data.pop("seq", None)
    return JobRow.model_validate(data)


class JobDB:
    """The jobs and events tables in ``<jobs_dir>/jobs.sqlite3``.

    Cheap to construct: nothing touches the disk until the first query.
    """

    def __init__(self, jobs_dir: Path):
        self.dir = Path(jobs_dir)
        self.path = self.dir / DB_NAME
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._ready = False

    # --- connections ---------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():
            conn: sqlite3.Connection = held[1]
            return conn
        if not self._ready:
            with self._init_lock:
                if not self._ready:
                    self._create()
        conn = self._open()
        self._local.conn = (os.getpid(), conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints, safe in WAL
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conn = self._open()
        try:
            # WAL is a property of the file: set once, every later connection uses it.
            _ensure_wal(conn)
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, type_ in _ADDED_COLUMNS:
                if name not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {type_}")
            conn.execute("COMMIT")
        finally:
            conn.close()
        self._ready = True

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        held = getattr(self._local, "conn", None)
        if held is not None:
            if held[0] == os.getpid():
                held[1].close()
            self._local.conn = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- reads ---------------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection, job_id: str) -> JobRow:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"No job {job_id[:80]!r}.", field="id")
        return _row_to_job(row)

    def get(self, job_id: str) -> JobRow:
        return self._get(self._conn(), job_id)

    def find(
        self,
        *,
        status: Collection[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[JobRow]:
        """Newest first; ``before`` is a job id: only jobs created before it."""
        where, args = [], []
        if status:
            where.append(f"status IN ({', '.join('?' * len(status))})")
            args += [JobStatus(s).value for s in status]
        if task is not None:
            where.append("task = ?")
            args.append(task)
        conn = self._conn()
        if before is not None:
            row = conn.execute("SELECT seq FROM jobs WHERE id = ?", (before,)).fetchone()
            if row is None:
                raise NotFound(f"No job {before[:80]!r}.", field="before")
            where.append("seq < ?")
            args.append(row["seq"])
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        return [_row_to_job(r) for r in conn.execute(sql, [*args, max(0, limit)])]

    def find_by_key(self, idempotency_key: str) -> JobRow | None:
        row = (
            self._conn()
            .execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
            .fetchone()
        )
        return None if row is None else _row_to_job(row)

    def queue_wait_s(self) -> float:
        """Seconds until a queued job is likely to start (a Retry-After for a full queue)."""
        return self._queue_wait_s(self._conn())

    def count(self, status: JobStatus) -> int:
        row = (
            self._conn()
            .execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,))
            .fetchone()
        )
        return int(row[0])

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by ``(task, status)``."""
        sql = "SELECT task, status, COUNT(*) FROM jobs GROUP BY task, status"
        return {(r[0], r[1]): int(r[2]) for r in self._conn().execute(sql)}

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        sql = "SELECT seq, type, at, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq"
        args: list[Any] = [job_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, limit))
        return [
            JobEvent(seq=r["seq"], type=r["type"], at=r["at"], data=json.loads(r["data"]))
            for r in self._conn().execute(sql, args)
        ]

    # --- writes --------------------------------------------------------------------

    @staticmethod
    def _append(
        conn: sqlite3.Connection, job_id: str, type_: str, data: dict[str, Any]
    ) -> JobEvent:
        row = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        event = JobEvent(seq=int(row[0]), type=type_, at=datetime.now(UTC), data=data)
        conn.execute(
            "INSERT INTO events (job_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, event.seq, event.type, event.at.isoformat(), json.dumps(data)),
        )
        return event

    @staticmethod
    def _set_clause(fields: dict[str, Any]) -> tuple[str, list[Any]]:
        unknown = set(fields) - _COLUMNS
        if unknown:
            raise ValueError(f"not settable job columns: {sorted(unknown)}")
        return (
            ", ".join(f"{column} = ?" for column in fields),
            [_encode(column, value) for column, value in fields.items()],
        )

    def create(self, job: Job, *, max_queued: int | None = None) -> tuple[JobRow, bool]:
        """Insert ``job`` (status queued) with its ``queued`` state event.

        Returns ``(job, True)``, or ``(the existing job, False)`` when its idempotency key
        is taken. Raises QueueFull when ``max_queued`` jobs already wait.
        """
        with self._write() as conn:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _row_to_job(row), False
            if max_queued is not None:
                queued = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
                ).fetchone()[0]
                if queued >= max_queued:
                    raise QueueFull(
                        f"{queued} jobs are already queued (the limit is {max_queued}); "
                        "try again later.",
                        retry_after=self._queue_wait_s(conn),
                    )
            data = job.model_dump(mode="json", exclude={"cancel_requested"})
            data["status"] = JobStatus.queued.value
            columns = [c for c in data if c in _COLUMNS | _CREATE_ONLY]
            values = [_encode(c, data[c]) for c in columns]
            conn.execute(
                f"INSERT INTO jobs (id, task, status, {', '.join(columns)}) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(columns))}) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                [job.id, job.task, data["status"], *values],
            )
            self._append(conn, job.id, "state", queued_event(job))
            return self._get(conn, job.id), True

    @staticmethod
    def _queue_wait_s(conn: sqlite3.Connection) -> float:
        """A guess at when a queued job will start: the soonest end of a running job."""
        waits = []
        for row in conn.execute(
            "SELECT progress, estimate, run_s FROM jobs WHERE status = 'running'"
        ):
            eta = json.loads(row["progress"] or "{}").get("eta_s")
            if eta is None and row["estimate"]:
                seconds = json.loads(row["estimate"]).get("seconds")
                eta = None if seconds is None else float(seconds) - row["run_s"]
            if eta is not None:
                waits.append(float(eta))
        wait = min(waits) if waits else QUEUE_WAIT_DEFAULT_S
        return min(QUEUE_WAIT_MAX_S, max(1.0, wait))

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        from_: Collection[JobStatus] | None = None,
        owner: int | None = None,
        reason: str | None = None,
        event: dict[str, Any] | None = None,
        log: str | None = None,
        **fields: Any,
    ) -> JobRow:
        """Move ``job_id`` to ``to`` if TRANSITIONS (narrowed to ``from_``) allow it.

        Sets ``fields`` in the same UPDATE and appends a ``state`` event
        ``{"status", "reason"?, **event}`` (after a ``log`` event with ``log``, if given).
        With ``owner`` the move happens only while that process owns the job. Terminal
        states stamp ``finished_at`` and clear the worker; ``queued`` clears them and the
        cancel request (the resets of :mod:`fnbundle.jobs.state`). Raises NotFound, or
        Conflict when the job is in a state that cannot move to ``to``.
        """
        sources = state.sources(to, from_)
        if to in TERMINAL:
            resets = {**state.FINISH_RESETS, "finished_at": now_iso()}
        elif to == JobStatus.queued:
            resets = state.QUEUE_RESETS
        else:
            resets = {}
        for name, value in _as_columns(resets).items():
            fields.setdefault(name, value)
        sets, args = self._set_clause(fields)
        where = f"id = ? AND status IN ({', '.join('?' * len(sources)) or 'NULL'})"
        where_args: list[Any] = [job_id, *(s.value for s in sources)]
        if owner is not None:
            where += " AND worker_pid = ?"
            where_args.append(owner)
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET status = ?{', ' + sets if sets else ''} WHERE {where}",
                [to.value, *args, *where_args],
            )
            if cur.rowcount == 0:
                current = self._get(conn, job_id)  # NotFound if there is no such job
                whose = "" if owner is None else f" (or not owned by process {owner})"
                raise Conflict(
                    f"Job {job_id} is {current.status.value}{whose}; it cannot become {to.value}.",
                    field="status",
                )
            if log:
                self._append(conn, job_id, "log", {"level": "warning", "message": log})
            data: dict[str, Any] = {"status": to.value}
            if reason:
                data["reason"] = reason
            self._append(conn, job_id, "state", data | (event or {}))
            return self._get(conn, job_id)

    def apply(
        self, job_id: str, move: state.Move, *, expect: JobStatus, attempt: int | None = None
    ) -> JobRow:
        """Write a move of :mod:`fnbundle.jobs.state` if the job is still ``expect`` (and at
        ``attempt``, when given): a compare-and-set of its fields and its events in one
        transaction. Conflict when the job moved meanwhile (the caller reads it again and
        decides anew)."""
        fields = _as_columns({k: v for k, v in move.fields.items() if k != "status"})
        to = move.status or expect
        sets, args = self._set_clause(fields)
        where, where_args = "id = ? AND status = ?", [job_id, expect.value]
        if attempt is not None:
            where += " AND attempts = ?"
            where_args.append(attempt)  # type: ignore[arg-type]
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET status = ?{', ' + sets if sets else ''} WHERE {where}",
                [to.value, *args, *where_args],
            )
            if cur.rowcount == 0:
                current = self._get(conn, job_id)  # NotFound if there is no such job
                raise Conflict(
                    f"Job {job_id} is {current.status.value}, no longer {expect.value}.",
                    field="status",
                )
            for type_, data in move.events:
                self._append(conn, job_id, type_, data)
            return self._get(conn, job_id)

    def claim_next(self, job_id: str | None = None) -> JobRow | None:
        """Move the oldest queued job (or ``job_id`` if it is queued) to running, attempt
        + 1; None if there is no such job."""
        with self._write() as conn:
            sql = "SELECT id FROM jobs WHERE status = 'queued'"
            args: tuple[str, ...] = ()
            if job_id is not None:
                sql, args = sql + " AND id = ?", (job_id,)
            row = conn.execute(sql + " ORDER BY seq LIMIT 1", args).fetchone()
            if row is None:
                return None
            job_id = row["id"]
            conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), worker_pid = NULL, deadline = NULL "
                "WHERE id = ? AND status = 'queued'",
                (now_iso(), job_id),
            )
            job = self._get(conn, job_id)
            self._append(conn, job_id, "state", {"status": "running", "attempt": job.attempts})
            return job

    def own(self, job_id: str, pid: int) -> bool:
        """Record ``pid`` as the worker of a running job nobody else owns yet."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET worker_pid = ? WHERE id = ? AND status = 'running' "
                "AND (worker_pid IS NULL OR worker_pid = ?)",
                (pid, job_id, pid),
            )
            return cur.rowcount == 1

    def update(
        self,
        job_id: str,
        *,
        events: Sequence[tuple[str, dict[str, Any]]] = (),
        worker_pid: int | None = None,
        status: Collection[JobStatus] | None = None,
        **fields: Any,
    ) -> None:
        """Set ``fields`` and append ``events`` in one transaction.

        With ``worker_pid`` the write happens only while that process still owns the
        running job, else LostJob; with ``status`` only in one of those states, else
        Conflict. Never changes the status itself.
        """
        sets, args = self._set_clause(fields)
        where, where_args = ["id = ?"], [job_id]
        if worker_pid is not None:
            where += ["status = 'running'", "worker_pid = ?"]
            where_args.append(worker_pid)  # type: ignore[arg-type]
        if status is not None:
            where.append(f"status IN ({', '.join('?' * len(status)) or 'NULL'})")
            where_args += [JobStatus(s).value for s in status]
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {sets or 'id = id'} WHERE {' AND '.join(where)}",
                [*args, *where_args],
            )
            if cur.rowcount == 0:
                current = self._get(conn, job_id)
                if worker_pid is not None:
                    raise LostJob(f"job {job_id} is {current.status.value}, not ours")
                raise Conflict(f"Job {job_id} is {current.status.value}.", field="status")
            for type_, data in events:
                self._append(conn, job_id, type_, data)


def _ensure_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch the file to WAL unless it already is. Changing the journal mode needs the
    file to itself, and SQLite answers "locked" at once instead of waiting on the busy
    timeout, so many processes opening a new database together retry here."""
    for attempt in range(attempts):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (1 + attempt % 10))
