"""Where a job's state lives, one protocol over three places: :class:`SqliteStore` (the
local gateway's SQLite file, :class:`~fnbundle.jobs.db.JobDB`), :class:`DictStore` (a
``modal.Dict``, :class:`DictState`) and :class:`LedgerStore` (the gateway's SQLite ledger of
a RunPod endpoint's jobs). :class:`~fnbundle.jobs.service.JobService` implements the job
API once over :class:`JobStore`.

Key rules every store keeps:

* A move (:class:`~fnbundle.jobs.state.Move`) is written only if the job is still in the
  state it was read in (``expect``, and ``attempt`` when given): a compare-and-set. Else
  :class:`~fnbundle.errors.Conflict`, and the caller reads the job again and decides anew.
* A move's events are appended in order with seqs 1, 2, 3, ... per job, without gaps, and
  no later than the status they record, so a reader that reads the status first and the
  events second sees the terminal ``state`` event of a finished job.
* An idempotency key belongs to the first job created with it, for ever.
* A cancel request of a running job is a flag the job's worker reads; where the worker
  owns the record (Modal), the flag lives beside it and the record is left to the worker.

The ``modal.Dict`` has no transactions: its compare-and-set reads, compares and writes, and
is safe because each record has one writer at a time (the web endpoint while no attempt owns
the job, else the attempt); appends use ``put(..., skip_if_exists=True)``, so racing writers
never overwrite an event. Importing this module imports neither modal nor the trainer.
"""

from __future__ import annotations

import builtins
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from fnbundle.errors import Conflict, NotFound
from fnbundle.jobs.db import JobDB, JobRow
from fnbundle.jobs.schema import Job, JobEvent, JobStatus
from fnbundle.jobs.state import Move

DICT_NAME = "fnbundle-jobs"  # the modal.Dict of Modal's job records and events


class JobStore(Protocol):
    """What :class:`~fnbundle.jobs.service.JobService` needs of a place that keeps jobs."""

    def create(self, job: Job, *, max_queued: int | None = None) -> tuple[JobRow, bool]:
        """Record ``job`` (queued) with its ``queued`` state event: ``(job, True)``, or
        ``(the key's job, False)`` when its idempotency key is taken. QueueFull when
        ``max_queued`` jobs already wait."""
        ...

    def remove(self, job_id: str) -> None:
        """Forget a job the platform never took (its key may be used again)."""
        ...

    def get(self, job_id: str) -> JobRow:
        """The job, with ``cancel_requested`` as its flag says; NotFound if unknown."""
        ...

    def find(
        self,
        *,
        status: Collection[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[JobRow]:
        """Newest first; ``before`` (a job id; NotFound if unknown) pages to older jobs."""
        ...

    def key_owner(self, key: str) -> str | None:
        """The id of the job created with idempotency key ``key``."""
        ...

    def apply(
        self, job_id: str, move: Move, *, expect: JobStatus, attempt: int | None = None
    ) -> JobRow:
        """Compare-and-set: write ``move`` if the job is ``expect`` (and at ``attempt``)."""
        ...

    def request_cancel(self, job_id: str, move: Move, *, expect: JobStatus) -> JobRow:
        """Raise a running job's cancel flag with ``move``'s events; Conflict if it moved."""
        ...

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        """The job's events after seq ``after``, in order."""
        ...

    def handle(self, job_id: str) -> str | None:
        """The platform's id of the job's current run (a Modal call, a RunPod job)."""
        ...

    def set_handle(self, job_id: str, handle: str) -> None: ...

    def count(self, status: JobStatus) -> int: ...

    def queue_wait_s(self) -> float:
        """Seconds until a queued job is likely to start (a full queue's Retry-After)."""
        ...


# --- SQLite (the local gateway) -----------------------------------------------------


class SqliteStore:
    """:class:`JobStore` over :class:`~fnbundle.jobs.db.JobDB`: each write one ``BEGIN
    IMMEDIATE`` transaction; the cancel flag is the row's ``cancel_requested`` column. No
    handle: the local scheduler owns its worker processes."""

    def __init__(self, db: JobDB):
        self.db = db

    def create(self, job: Job, *, max_queued: int | None = None) -> tuple[JobRow, bool]:
        return self.db.create(job, max_queued=max_queued)

    def remove(self, job_id: str) -> None:
        raise NotImplementedError("the local scheduler takes every job it records")

    def get(self, job_id: str) -> JobRow:
        return self.db.get(job_id)

    def find(
        self,
        *,
        status: Collection[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[JobRow]:
        return self.db.find(status=status, task=task, limit=limit, before=before)

    def key_owner(self, key: str) -> str | None:
        row = self.db.find_by_key(key)
        return None if row is None else row.id

    def apply(
        self, job_id: str, move: Move, *, expect: JobStatus, attempt: int | None = None
    ) -> JobRow:
        return self.db.apply(job_id, move, expect=expect, attempt=attempt)

    def request_cancel(self, job_id: str, move: Move, *, expect: JobStatus) -> JobRow:
        return self.db.apply(job_id, move, expect=expect)

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        return self.db.events(job_id, after, limit)

    def handle(self, job_id: str) -> str | None:
        return None

    def set_handle(self, job_id: str, handle: str) -> None:
        """Nothing to keep: the scheduler knows its processes."""

    def count(self, status: JobStatus) -> int:
        return self.db.count(status)

    def queue_wait_s(self) -> float:
        return self.db.queue_wait_s()


# --- modal.Dict (Modal) ---------------------------------------------------------------


class KeyValue(Protocol):
    """What this module needs of a ``modal.Dict``; a plain ``dict`` has it too."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...

    def pop(self, key: str, default: Any = None) -> Any: ...


def default_state() -> KeyValue:
    import modal

    return cast(KeyValue, modal.Dict.from_name(DICT_NAME, create_if_missing=True))


class DictState:
    """The Dict's key layout (values are plain JSON-able dicts and strings)::

    job:<id>         the job record (JobRow JSON)
    call:<id>        the FunctionCall id of the job's current spawn
    cancel:<id>      unix time of the first cancel request (removed by a retry)
    key:<key>        the job id an idempotency key created
    event:<id>:<n>   the job's n-th event (JobEvent JSON), n = 1, 2, 3, ... without gaps
    jobs:<n>         the n-th job submitted (``find`` walks it newest first)
    events:<id>, jobs:last   where the last append ended (a hint that only saves probing)
    """

    def __init__(self, d: KeyValue):
        self.d = d

    def put_new(self, key: str, value: Any) -> bool:
        """Set ``key`` only if it is absent; True if this call set it."""
        if isinstance(self.d, dict):
            return self.d.setdefault(key, value) is value
        return bool(self.d.put(key, value, skip_if_exists=True))  # type: ignore[attr-defined]

    def _append(self, hint: str, prefix: str, make: Callable[[int], Any]) -> int:
        n = int(self.d.get(hint) or 0) + 1
        while not self.put_new(f"{prefix}{n}", make(n)):
            n += 1
        self.d[hint] = n
        return n

    def _last(self, hint: str, prefix: str) -> int:
        n = int(self.d.get(hint) or 0)
        while self.d.get(f"{prefix}{n + 1}") is not None:
            n += 1
        return n

    def record(self, job_id: str) -> JobRow | None:
        data = self.d.get(f"job:{job_id}")
        return None if data is None else JobRow.model_validate(data)

    def save(self, row: JobRow) -> None:
        self.d[f"job:{row.id}"] = row.model_dump(mode="json")

    def create(self, job: Job) -> JobRow:
        row = JobRow.model_validate(job.model_dump())
        self.save(row)
        self._append("jobs:last", "jobs:", lambda _n: job.id)
        self.append_event(job.id, "state", {"status": JobStatus.queued.value})
        return row

    def job_ids(self) -> Iterator[str]:
        """Newest first."""
        for n in range(self._last("jobs:last", "jobs:"), 0, -1):
            job_id = self.d.get(f"jobs:{n}")
            if job_id is not None:
                yield str(job_id)

    def call_id(self, job_id: str) -> str | None:
        value = self.d.get(f"call:{job_id}")
        return None if value is None else str(value)

    def set_call(self, job_id: str, call_id: str) -> None:
        self.d[f"call:{job_id}"] = call_id

    def cancelled_at(self, job_id: str) -> float | None:
        value = self.d.get(f"cancel:{job_id}")
        return None if value is None else float(value)

    def key_owner(self, key: str) -> str | None:
        value = self.d.get(f"key:{key}")
        return None if value is None else str(value)

    def public(self, row: JobRow) -> Job:
        """The job as readers see it: a running job with the cancel flag set says so."""
        return self.flagged(row).public()

    def flagged(self, row: JobRow) -> JobRow:
        if row.status == JobStatus.running and self.cancelled_at(row.id) is not None:
            return row.model_copy(update={"cancel_requested": True})
        return row

    def apply(self, row: JobRow, move: Move) -> JobRow:
        """Append a move's events, then save the record it leaves (see :mod:`.state`)."""
        for type_, data in move.events:
            self.append_event(row.id, type_, data)
        moved = row.model_copy(update=move.fields)
        self.save(moved)
        return moved

    def clear_cancel(self, job_id: str) -> None:
        """Remove a cancel flag (a retried job starts without one)."""
        self.d.pop(f"cancel:{job_id}", None)

    def append_event(self, job_id: str, type_: str, data: dict[str, Any]) -> int:
        at = datetime.now(UTC).isoformat()
        return self._append(
            f"events:{job_id}",
            f"event:{job_id}:",
            lambda n: {"seq": n, "type": type_, "at": at, "data": data},
        )

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        out: list[JobEvent] = []
        n = after + 1
        while limit is None or len(out) < limit:
            data = self.d.get(f"event:{job_id}:{n}")
            if data is None:
                return out
            out.append(JobEvent.model_validate(data))
            n += 1
        return out


class DictStore:
    """:class:`JobStore` over a ``modal.Dict`` (:class:`DictState`). The web endpoint writes
    a record only while no attempt owns it (queued, or finished); a running job's cancel is
    the ``cancel:<id>`` flag, which the attempt reads."""

    RECORD_WAIT_S = 10.0  # seconds a losing idempotent submit waits for the winner's record

    def __init__(self, d: KeyValue):
        self.state = DictState(d)

    def create(self, job: Job, *, max_queued: int | None = None) -> tuple[JobRow, bool]:
        key = job.idempotency_key
        if key is not None and not self.state.put_new(f"key:{key}", job.id):
            return self.get(self.state.key_owner(key) or job.id, wait=True), False
        return self.state.create(job), True

    def remove(self, job_id: str) -> None:
        row = self.state.record(job_id)
        if row is not None and row.idempotency_key is not None:
            self.state.d.pop(f"key:{row.idempotency_key}", None)
        self.state.d.pop(f"job:{job_id}", None)

    def get(self, job_id: str, *, wait: bool = False) -> JobRow:
        deadline = time.monotonic() + (self.RECORD_WAIT_S if wait else 0.0)
        while (row := self.state.record(job_id)) is None:
            if not wait:
                raise NotFound(f"No job {job_id[:80]!r}.", field="id")
            if time.monotonic() > deadline:
                raise Conflict(f"Job {job_id} is still being created; try again.", field="id")
            time.sleep(0.1)
        return self.state.flagged(row)

    def find(
        self,
        *,
        status: Collection[JobStatus] | None = None,
        task: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[JobRow]:
        if before is not None and self.state.record(before) is None:
            raise NotFound(f"No job {before[:80]!r}.", field="before")
        ids = self.state.job_ids()
        if before is not None:
            ids = itertools.dropwhile(lambda job_id: job_id != before, ids)
            next(ids, None)  # ``before`` itself
        rows = (self.state.record(job_id) for job_id in ids)
        return select(
            (self.state.flagged(row) for row in rows if row is not None), status, task, limit
        )

    def key_owner(self, key: str) -> str | None:
        return self.state.key_owner(key)

    def apply(
        self, job_id: str, move: Move, *, expect: JobStatus, attempt: int | None = None
    ) -> JobRow:
        row = self.get(job_id)
        if row.status != expect or (attempt is not None and row.attempts != attempt):
            raise Conflict(
                f"Job {job_id} is {row.status.value}, no longer {expect.value}.", field="status"
            )
        if move.status == JobStatus.cancelled:  # a claim that races this sees the flag
            self.state.put_new(f"cancel:{job_id}", time.time())
        elif move.status == JobStatus.queued:  # a retry starts without a cancel request
            self.state.clear_cancel(job_id)
        return self.state.flagged(self.state.apply(row, move))

    def request_cancel(self, job_id: str, move: Move, *, expect: JobStatus) -> JobRow:
        row = self.get(job_id)
        if row.status != expect:
            raise Conflict(
                f"Job {job_id} is {row.status.value}, no longer {expect.value}.", field="status"
            )
        if self.state.put_new(f"cancel:{job_id}", time.time()):
            for type_, data in move.events:  # the attempt owns the record: events only
                self.state.append_event(job_id, type_, data)
        return self.get(job_id)

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        return self.state.events(job_id, after, limit)

    def handle(self, job_id: str) -> str | None:
        return self.state.call_id(job_id)

    def set_handle(self, job_id: str, handle: str) -> None:
        self.state.set_call(job_id, handle)

    def count(self, status: JobStatus) -> int:
        return len(self.find(status=[status], limit=1_000_000))

    def queue_wait_s(self) -> float:
        return 1.0  # Modal starts every spawned job: nothing waits on this side


# --- the RunPod ledger (the gateway in front of a RunPod endpoint) --------------------

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
            self._append(job.id, "state", {"status": JobStatus.queued.value})
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

    def queue_wait_s(self) -> float:
        return 5.0  # RunPod queues what it takes; a full queue here is RunPod's 429


def select(
    rows: Iterator[JobRow] | builtins.list[JobRow],
    status: Collection[JobStatus] | None,
    task: str | None,
    limit: int,
) -> builtins.list[JobRow]:
    """The first ``limit`` of ``rows`` in one of ``status`` and of ``task`` (unset: any)."""
    wanted = (
        r for r in rows if (not status or r.status in status) and (not task or r.task == task)
    )
    return builtins.list(itertools.islice(wanted, limit))


if TYPE_CHECKING:  # each store is a JobStore (checked by mypy, costs nothing at run time)

    def _stores(db: JobDB, d: KeyValue, path: Path) -> builtins.list[JobStore]:
        return [SqliteStore(db), DictStore(d), LedgerStore(path)]
