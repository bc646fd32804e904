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

One module per store (:mod:`.sqlite`, :mod:`.modal_dict`, :mod:`.ledger`) beside the
protocol (:mod:`.base`). Importing this package imports neither modal nor the trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fnbundle.jobs.stores.base import JobStore, select
from fnbundle.jobs.stores.ledger import LedgerStore
from fnbundle.jobs.stores.modal_dict import (
    DICT_NAME,
    DictState,
    DictStore,
    KeyValue,
    default_state,
)
from fnbundle.jobs.stores.sqlite import SqliteStore

__all__ = [
    "DICT_NAME",
    "DictState",
    "DictStore",
    "JobStore",
    "KeyValue",
    "LedgerStore",
    "SqliteStore",
    "default_state",
    "select",
]

if TYPE_CHECKING:  # each store is a JobStore (checked by mypy, costs nothing at run time)
    from pathlib import Path

    from fnbundle.jobs.db import JobDB

    def _stores(db: JobDB, d: KeyValue, path: Path) -> list[JobStore]:
        return [SqliteStore(db), DictStore(d), LedgerStore(path)]
