"""The sent log: event ids already delivered, so a retried job end is not sent twice."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class SentLog(Protocol):
    """Remembers which event ids were delivered, so an event is sent once."""

    def seen(self, event_id: str) -> bool: ...

    def mark(self, event_id: str) -> None: ...


class MemorySentLog:
    """A sent log for one process (tests, the local runtime)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def seen(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._ids

    def mark(self, event_id: str) -> None:
        with self._lock:
            self._ids.add(event_id)


class SqliteSentLog:
    """A sent log in a SQLite file that survives restarts (``webhook_deliveries`` table).

    One connection per call, so instances can be shared across threads and processes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS webhook_deliveries ("
                "event_id TEXT PRIMARY KEY, delivered_at TEXT NOT NULL)"
            )

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=30, isolation_level=None))

    def seen(self, event_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE event_id = ?", (event_id,)
            ).fetchone()
        return row is not None

    def mark(self, event_id: str) -> None:
        now = datetime.now(UTC).isoformat()
        with self._connect() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (event_id, delivered_at) VALUES (?, ?)",
                (event_id, now),
            )
