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
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fnbundle.errors import Conflict, NotFound, QueueFull
from fnbundle.jobs import state, tables
from fnbundle.jobs.schema import TERMINAL, Job, JobEvent, JobRow, JobStatus, LostJob, queued_event

QUEUE_WAIT_DEFAULT_S = 30.0  # Retry-After when nothing running tells us better
QUEUE_WAIT_MAX_S = 3600.0  # seconds; a client should come back within the hour anyway


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class JobDB:
    """The jobs and events tables in ``<jobs_dir>/jobs.sqlite3``.

    Cheap to construct: nothing touches the disk until the first query.
    """

    def __init__(self, jobs_dir: Path):
        self.dir = Path(jobs_dir)
        self.path = self.dir / tables.DB_NAME
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
        return tables.connect(self.path)

    def _create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tables.create(self.path)
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
        return tables.row_to_job(row)

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
        return [tables.row_to_job(r) for r in conn.execute(sql, [*args, max(0, limit)])]

    def find_by_key(self, idempotency_key: str) -> JobRow | None:
        row = (
            self._conn()
            .execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
            .fetchone()
        )
        return None if row is None else tables.row_to_job(row)

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
        unknown = set(fields) - tables.SETTABLE
        if unknown:
            raise ValueError(f"not settable job columns: {sorted(unknown)}")
        return (
            ", ".join(f"{column} = ?" for column in fields),
            [tables.encode(column, value) for column, value in fields.items()],
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
                    return tables.row_to_job(row), False
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
            columns = [c for c in data if c in tables.SETTABLE | tables.CREATE_ONLY]
            values = [tables.encode(c, data[c]) for c in columns]
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
        for name, value in tables.as_columns(resets).items():
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
        fields = tables.as_columns({k: v for k, v in move.fields.items() if k != "status"})
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
