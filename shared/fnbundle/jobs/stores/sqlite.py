"""The local gateway's store: the SQLite file of :class:`~fnbundle.jobs.db.JobDB`."""

from __future__ import annotations

import builtins
from collections.abc import Collection

from fnbundle.jobs.db import JobDB
from fnbundle.jobs.schema import Job, JobEvent, JobRow, JobStatus
from fnbundle.jobs.state import Move


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

    def counts(self) -> dict[tuple[str, str], int]:
        return self.db.counts()

    def queue_wait_s(self) -> float:
        return self.db.queue_wait_s()


# --- modal.Dict (Modal) ---------------------------------------------------------------
