"""The local job store's SQLite file: its tables, the columns a caller may set, how a row
becomes a :class:`~fnbundle.jobs.schema.JobRow`, and opening the file.

Key rule: before its first connection a store object creates the tables, switches the
file to WAL and adds any column added since the file was written (:func:`create`, safe
when many processes do it at once); every connection then waits on the write lock for
:data:`BUSY_TIMEOUT_MS` instead of failing (:func:`connect`). The store's logic,
transactions and status moves are :class:`~fnbundle.jobs.db.JobDB`'s.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fnbundle.jobs.schema import JobRow

DB_NAME = "jobs.sqlite3"
BUSY_TIMEOUT_MS = 60_000  # how long a writer waits for the lock before giving up

SCHEMA = """
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

JSON_COLUMNS = frozenset({"params", "estimate", "progress", "metrics", "error"})
# Columns a caller may set; ``status`` is not among them (see JobDB.transition).
SETTABLE = frozenset(
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
CREATE_ONLY = frozenset({"params", "idempotency_key", "created_at", "request_id"})
# Columns added after the first release: (name, type), added to an older file on open.
ADDED_COLUMNS = (("request_id", "TEXT"),)


def encode(column: str, value: Any) -> Any:
    if column in JSON_COLUMNS and value is not None:
        return json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def as_columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Job fields as columns: the ``cancel_requested`` column holds the request's time."""
    out = dict(fields)
    out.pop("cancel_requested", None)
    if "cancel_requested_at" in out:
        out["cancel_requested"] = out.pop("cancel_requested_at")
    return out


def row_to_job(row: sqlite3.Row) -> JobRow:
    data: dict[str, Any] = dict(row)
    for column in JSON_COLUMNS:
        if data.get(column) is not None:
            data[column] = json.loads(data[column])
    data["metrics"] = data.get("metrics") or {}
    data["progress"] = data.get("progress") or {}
    data["cancel_requested_at"] = data.pop("cancel_requested")
    data["cancel_requested"] = data["cancel_requested_at"] is not None
    data.pop("seq", None)
    return JobRow.model_validate(data)


def connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the store issues BEGIN/COMMIT itself.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints, safe in WAL
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def create(path: Path) -> None:
    """The tables (and any column added since the file was written), in WAL mode."""
    conn = connect(path)
    try:
        # WAL is a property of the file: set once, every later connection uses it.
        _ensure_wal(conn)
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        for name, type_ in ADDED_COLUMNS:
            if name not in present:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {type_}")
        conn.execute("COMMIT")
    finally:
        conn.close()


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
