"""The gateway's store of a RunPod endpoint's jobs: a SQLite ledger on the gateway."""

from __future__ import annotations

import builtins
import sqlite3
import threading
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fnbundle.errors import Conflict, NotFound
from fnbundle.jobs.schema import Job, JobEvent, JobRow, JobStatus, queued_event
from fnbundle.jobs.state import Move
from fnbundle.jobs.stores.base import select

_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS runpod_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order
    id TEXT NOT NULL UNIQUE,
    rp_id TEXT,                             -- RunPod's id of the job's latest run
    idempotency_key TEXT UNIQUE,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL                       -- the job as last known (JobRow JSON)
);
CREATE TABLE IF NOT EXISTS runpod_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,                     -- JobEvent JSON
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""


class LedgerStore:
    """:class:`JobStore` in the gateway's SQLite ledger of a RunPod endpoint's jobs: our id
    <-> RunPod's id, the job as last known, and every event received (``/stream`` hands each
    out once, so they are kept here). One client per file. Events the worker streams keep
    their seqs (:meth:`add_event`); the gateway's own moves append after the last one."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.RLock()
        with self.lock:
            self.conn.executescript(_LEDGER_SCHEMA)

    def create(self, job: Job, *, max_queued: int | None = None) -> tuple[JobRow, bool]:
        row = JobRow.model_validate(job.model_dump())
        with self.lock:
            cur = self.conn.execute(
                "INSERT INTO runpod_jobs (id, idempotency_key, task, status, job) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                (job.id, job.idempotency_key, job.task, job.status.value, row.model_dump_json()),
            )
            if cur.rowcount == 0:
                return self.get(self.key_owner(job.idempotency_key or "") or job.id), False
            self._append(job.id, "state", queued_event(job))
        return row, True

    def remove(self, job_id: str) -> None:
        with self.lock:
            self.conn.execute("DELETE FROM runpod_events WHERE job_id = ?", (job_id,))
            self.conn.execute("DELETE FROM runpod_jobs WHERE id = ?", (job_id,))

    def get(self, job_id: str) -> JobRow:
        with self.lock:
            row = self.conn.execute(
                "SELECT job FROM runpod_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"No job {job_id[:80]!r}.", field="id")
        return JobRow.model_validate_json(row[0])

    def find(
        self,
        *,
        status: Collection[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[JobRow]:
        sql, args = "SELECT id FROM runpod_jobs", []
        with self.lock:
            if before is not None:
                if (
                    self.conn.execute(
                        "SELECT 1 FROM runpod_jobs WHERE id = ?", (before,)
                    ).fetchone()
                    is None
                ):
                    raise NotFound(f"No job {before[:80]!r}.", field="before")
                sql += " WHERE seq < (SELECT seq FROM runpod_jobs WHERE id = ?)"
                args.append(before)
            ids = [r[0] for r in self.conn.execute(sql + " ORDER BY seq DESC", args)]
        return select((self.get(job_id) for job_id in ids), status, task, limit)

    def key_owner(self, key: str) -> str | None:
        with self.lock:
            row = self.conn.execute(
                "SELECT id FROM runpod_jobs WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def save(self, row: JobRow) -> None:
        with self.lock:
            self.conn.execute(
                "UPDATE runpod_jobs SET job = ?, status = ? WHERE id = ?",
                (row.model_dump_json(), row.status.value, row.id),
            )

    def apply(
        self, job_id: str, move: Move, *, expect: JobStatus, attempt: int | None = None
    ) -> JobRow:
        with self.lock:
            row = self.get(job_id)
            if row.status != expect or (attempt is not None and row.attempts != attempt):
                raise Conflict(
                    f"Job {job_id} is {row.status.value}, no longer {expect.value}.",
                    field="status",
                )
            for type_, data in move.events:
                self._append(job_id, type_, data)
            moved = row.model_copy(update=move.fields)
            self.save(moved)
            return moved

    def request_cancel(self, job_id: str, move: Move, *, expect: JobStatus) -> JobRow:
        return self.apply(job_id, move, expect=expect)

    def _append(self, job_id: str, type_: str, data: dict[str, Any]) -> JobEvent:
        event = JobEvent(seq=self.last_seq(job_id) + 1, type=type_, at=datetime.now(UTC), data=data)
        self.add_event(job_id, event)
        return event

    def add_event(self, job_id: str, event: JobEvent) -> bool:
        """Keep an event as the worker numbered it; False if that seq is already here."""
        with self.lock:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO runpod_events (job_id, seq, data) VALUES (?, ?, ?)",
                (job_id, event.seq, event.model_dump_json()),
            )
            return cur.rowcount == 1

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        sql = "SELECT data FROM runpod_events WHERE job_id = ? AND seq > ? ORDER BY seq"
        args: list[Any] = [job_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, limit))
        with self.lock:
            return [JobEvent.model_validate_json(r[0]) for r in self.conn.execute(sql, args)]

    def last_seq(self, job_id: str) -> int:
        with self.lock:
            row = self.conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM runpod_events WHERE job_id = ?", (job_id,)
            ).fetchone()
        return int(row[0])

    def handle(self, job_id: str) -> str | None:
        with self.lock:
            row = self.conn.execute(
                "SELECT rp_id FROM runpod_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def set_handle(self, job_id: str, handle: str) -> None:
        with self.lock:
            self.conn.execute("UPDATE runpod_jobs SET rp_id = ? WHERE id = ?", (handle, job_id))

    def count(self, status: JobStatus) -> int:
        with self.lock:
            row = self.conn.execute(
                "SELECT COUNT(*) FROM runpod_jobs WHERE status = ?", (status.value,)
            ).fetchone()
        return int(row[0])

    def counts(self) -> dict[tuple[str, str], int]:
        sql = "SELECT task, status, COUNT(*) FROM runpod_jobs GROUP BY task, status"
        with self.lock:
            return {(r[0], r[1]): int(r[2]) for r in self.conn.execute(sql)}

    def queue_wait_s(self) -> float:
        return 5.0  # RunPod queues what it takes; a full queue here is RunPod's 429
