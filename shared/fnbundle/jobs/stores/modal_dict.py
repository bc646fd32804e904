"""Modal's store: job records and events in a ``modal.Dict``.

The Dict has no transactions: a compare-and-set reads, compares and writes, and is safe
because each record has one writer at a time (the web endpoint while no attempt owns the
job, else the attempt); appends use ``put(..., skip_if_exists=True)``, so racing writers
never overwrite an event. Importing this module does not import modal.
"""

from __future__ import annotations

import builtins
import itertools
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from fnbundle.errors import Conflict, NotFound
from fnbundle.jobs.schema import Job, JobEvent, JobRow, JobStatus, queued_event
from fnbundle.jobs.state import Move
from fnbundle.jobs.stores.base import select

DICT_NAME = "fnbundle-jobs"  # the modal.Dict of Modal's job records and events


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
        self.append_event(job.id, "state", queued_event(job))
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

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(Counter((r.task, r.status.value) for r in self.find(limit=1_000_000)))

    def queue_wait_s(self) -> float:
        return 1.0  # Modal starts every spawned job: nothing waits on this side
