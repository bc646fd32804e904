"""Datasets: the tables and text files users upload, kept beside the models.

Layout of ``<store>/datasets/``::

    ds-<16 hex>/data.<csv|tsv|jsonl|parquet>   the file as received
    ds-<16 hex>/info.json                      DatasetInfo
    ds-<16 hex>/schema.json                    the detected schema (written on first read)
    .incoming/                                 uploads being received

Key rules:

* A dataset's id is its content's sha256 (the first 16 hex digits): the same file twice is
  one dataset, whatever its name; the second add answers the first's record.
* An upload is streamed to ``.incoming`` while it is hashed and counted; past the limit it
  is deleted and the client gets 413. It becomes a dataset only once it reads as a table
  (:func:`fnbundle.tabular.read.read_table`), by one rename: a reader never sees half a
  dataset, and a failed upload leaves nothing behind.
* Every path is resolved inside the datasets folder; an id must have the shape above.
* Jobs name a dataset by its id in ``data`` (:func:`resolve_data`), or a path inside the
  data roots as before.

Importing this module imports neither pandas nor boto3.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from fnbundle.errors import FnbError, InvalidRequest, NotFound, PayloadTooLarge
from fnbundle.loading import resolve_inside_roots
from fnbundle.store import fsync_path

if TYPE_CHECKING:
    from fnbundle.settings import Settings
    from fnbundle.tabular.read import Format
    from fnbundle.tabular.schema import TableSchema

DATASET_ID = re.compile(r"ds-[0-9a-f]{16}")
INCOMING = ".incoming"
CHUNK = 1 << 20  # bytes per read when copying


class DatasetInfo(BaseModel):
    id: str = Field(description="ds- and the first 16 hex digits of the file's sha256.")
    sha256: str
    name: str = Field(description="The file name it was uploaded with.")
    format: str = Field(description="csv, tsv, jsonl or parquet.")
    bytes: int
    rows: int
    columns: list[str]
    source: str = Field(description="upload, a path inside the data roots, or an s3:// URI.")
    created: datetime


def datasets_root(settings: Settings) -> Path:
    return settings.store_root / "datasets"


def is_dataset_id(value: object) -> bool:
    return isinstance(value, str) and DATASET_ID.fullmatch(value) is not None


def resolve_data(data: str | Path, settings: Settings, *, field: str = "data") -> Path:
    """The file ``data`` names: a dataset id's file, or a path inside the data roots."""
    if is_dataset_id(data):
        return DatasetStore(datasets_root(settings)).data_path(str(data), field=field)
    return resolve_inside_roots(data, settings.data_roots, field=field)


def data_roots(settings: Settings) -> list[Path]:
    """Where a job's data may be read: the data roots and the datasets folder."""
    return [*settings.data_roots, datasets_root(settings)]


class DatasetStore:
    def __init__(self, root: Path):
        self.root = root

    # --- reading ----------------------------------------------------------------------
    def _folder(self, dataset_id: str, field: str = "id") -> Path:
        if not is_dataset_id(dataset_id):
            raise InvalidRequest(
                f"{dataset_id[:80]!r} is not a dataset id (ds- and 16 hex digits).", field=field
            )
        folder = resolve_inside_roots(self.root / dataset_id, [self.root], field=field)
        if not (folder / "info.json").is_file():
            raise NotFound(f"No dataset {dataset_id}.", field=field)
        return folder

    def get(self, dataset_id: str, *, field: str = "id") -> DatasetInfo:
        folder = self._folder(dataset_id, field)
        return DatasetInfo.model_validate_json((folder / "info.json").read_bytes())

    def data_path(self, dataset_id: str, *, field: str = "id") -> Path:
        info = self.get(dataset_id, field=field)
        path = resolve_inside_roots(
            self.root / dataset_id / f"data.{info.format}", [self.root / dataset_id], field=field
        )
        if not path.is_file():
            raise NotFound(f"Dataset {dataset_id} has lost its file.", field=field)
        return path

    def list(self) -> list[DatasetInfo]:
        """Newest first; a folder that is not a whole dataset is skipped."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if not is_dataset_id(folder.name) or folder.is_symlink():
                continue
            try:
                found.append(self.get(folder.name))
            except (FnbError, ValueError, OSError):
                continue
        return sorted(found, key=lambda d: d.created, reverse=True)

    def schema(self, dataset_id: str) -> TableSchema:
        """The detected schema, read from the file once and kept beside it."""
        from fnbundle.tabular.read import read_table
        from fnbundle.tabular.schema import TableSchema, detect

        path = self.data_path(dataset_id)
        cached = path.parent / "schema.json"
        if cached.is_file():
            try:
                return TableSchema.model_validate_json(cached.read_bytes())
            except ValueError:
                pass  # written by another version: detect again
        schema = detect(read_table(path, self.get(dataset_id).format))  # type: ignore[arg-type]
        tmp = cached.with_name(f".schema.{secrets.token_hex(4)}.tmp")
        tmp.write_text(schema.model_dump_json())
        os.replace(tmp, cached)
        return schema

    def delete(self, dataset_id: str) -> None:
        folder = self._folder(dataset_id)
        trash = self.root / INCOMING / f"deleted-{dataset_id}-{secrets.token_hex(4)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, trash)  # gone from every reader at once, then removed
        shutil.rmtree(trash, ignore_errors=True)

    # --- adding -------------------------------------------------------------------------
    def incoming(self) -> Path:
        folder = self.root / INCOMING
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"upload-{secrets.token_hex(8)}"

    async def add_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        name: str,
        max_bytes: int,
        fmt: Format | None = None,
        source: str = "upload",
    ) -> tuple[DatasetInfo, bool]:
        """Receive ``chunks`` into a dataset (see the module docstring); (info, created)."""
        from starlette.concurrency import run_in_threadpool

        too_big = f"The dataset is over the limit of {max_bytes} bytes (FNB_DATASET_MAX_MIB)."
        with _Intake(self.incoming(), max_bytes, too_big, "file") as intake:
            async for chunk in chunks:
                intake.write(chunk)
            intake.close()
            return await run_in_threadpool(self._commit, intake, name, fmt, source)

    def add_file(
        self, path: Path, *, name: str | None = None, max_bytes: int, source: str
    ) -> tuple[DatasetInfo, bool]:
        """Copy a local file (already resolved inside its root) into a dataset."""
        size = path.stat().st_size
        if size > max_bytes:
            raise PayloadTooLarge(
                f"{path.name} is {size} bytes, over the limit of {max_bytes} bytes.", field="path"
            )
        with path.open("rb") as src:
            chunks = iter(lambda: src.read(CHUNK), b"")
            return self.add_chunks(
                chunks, name=name or path.name, max_bytes=max_bytes, source=source
            )

    def add_chunks(
        self, chunks: Iterable[bytes], *, name: str, max_bytes: int, source: str
    ) -> tuple[DatasetInfo, bool]:
        """A dataset from a blocking stream of bytes (a download); 413 past ``max_bytes``."""
        too_big = f"{name} is over the limit of {max_bytes} bytes."
        with _Intake(self.incoming(), max_bytes, too_big, "source") as intake:
            for chunk in chunks:
                intake.write(chunk)
            intake.close()
            return self._commit(intake, name, None, source)

    def _commit(
        self, intake: _Intake, name: str, fmt: Format | None, source: str
    ) -> tuple[DatasetInfo, bool]:
        from fnbundle.tabular.read import read_table, sniff_format

        staged, sha, size = intake.path, intake.digest.hexdigest(), intake.size
        dataset_id = f"ds-{sha[:16]}"
        if (self.root / dataset_id / "info.json").is_file():
            return self.get(dataset_id), False
        name = safe_name(name)
        fmt = fmt or sniff_format(staged, name)
        frame = read_table(staged, fmt, name=name)  # a TableError (400) if it is not a table
        info = DatasetInfo(
            id=dataset_id,
            sha256=sha,
            name=name,
            format=fmt,
            bytes=size,
            rows=len(frame),
            columns=[str(c) for c in frame.columns],
            source=source,
            created=datetime.now(UTC),
        )
        folder = staged.with_name(f"{staged.name}.d")
        folder.mkdir()
        os.replace(staged, folder / f"data.{fmt}")
        (folder / "info.json").write_text(info.model_dump_json(indent=1))
        fsync_path(folder / f"data.{fmt}")
        try:
            os.rename(folder, self.root / dataset_id)
        except OSError:  # the same file arrived twice at once: the other one is the dataset
            shutil.rmtree(folder, ignore_errors=True)
            return self.get(dataset_id), False
        fsync_path(self.root)
        return info, True


class _Intake:
    """A file arriving in ``.incoming``: counted against ``max_bytes`` (413 past it, with
    ``message`` naming ``field``) and hashed as it is written; removed on leaving, whatever
    happened (a committed dataset has been moved away by then)."""

    def __init__(self, path: Path, max_bytes: int, message: str, field: str):
        self.path, self.max_bytes, self.message, self.field = path, max_bytes, message, field
        self.digest, self.size = hashlib.sha256(), 0
        self.file = path.open("wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(self.message, field=self.field)
        self.digest.update(chunk)
        self.file.write(chunk)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> _Intake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def safe_name(name: str) -> str:
    """A file name to show (never used as a path): its last part, printable, bounded."""
    base = re.split(r"[\\/]", name.strip())[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:200]
    return base or "upload"
