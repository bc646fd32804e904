"""Datasets over HTTP: upload, import, list, read, schema, delete.

``POST /v1/datasets`` takes the file three ways:

* the raw body (``curl --data-binary @churn.csv -H 'Content-Type: text/csv'``, a browser's
  ``fetch(url, {method: "POST", body: file})``), named by ``?name=churn.csv``;
* a form (``curl -F file=@churn.csv``), the file in its ``file`` field;
* JSON naming where it is: ``{"path": "tables/churn.csv"}`` inside the data roots, or
  ``{"source": "s3://bucket/key"}`` on the S3-compatible store the settings name.

Key rules: the file is streamed to disk, never held in memory; over ``dataset_max_mib`` is a
413 and nothing is kept; the same content twice answers the first dataset with 200 (a new
one is 201); a file that is not a table is a 400 naming the line. The schema is detected on
first read and kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from fnbundle.dataset_sync import DatasetSync, LocalDatasets
from fnbundle.datasets import DATASET_ID, DatasetInfo, DatasetStore, datasets_root
from fnbundle.errors import InvalidRequest, ValidationFailed
from fnbundle.settings import MIB
from fnbundle.tabular.schema import TableSchema

router = APIRouter(tags=["datasets"])

DatasetId = Annotated[
    str,
    Path(
        description="ds- and the first 16 hex digits of the file's sha256.",
        json_schema_extra={"pattern": f"^{DATASET_ID.pattern}$"},
    ),
]
TEXT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/tab-separated-values": "tsv",
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}


class DatasetImport(BaseModel):
    """Where the file is, when it is not in the body."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None, max_length=1024, description="A file inside the data roots.")
    source: str | None = Field(
        None, max_length=2048, description="s3://bucket/key on the configured S3 store."
    )
    name: str | None = Field(None, max_length=200, description="The name to show.")


class DatasetList(BaseModel):
    data: list[DatasetInfo]


def _store(request: Request) -> DatasetStore:
    return DatasetStore(datasets_root(request.app.state.settings))


def _sync(request: Request) -> DatasetSync:
    """Where datasets must also be for the workers (fnbundle.dataset_sync)."""
    return getattr(request.app.state, "dataset_sync", None) or LocalDatasets()


async def _refreshed(request: Request) -> DatasetStore:
    await run_in_threadpool(_sync(request).refresh)
    return _store(request)


async def _synced(
    request: Request, store: DatasetStore, answer: tuple[DatasetInfo, bool]
) -> Response:
    """The answer once the workers can read the dataset too (a 503 if they cannot yet)."""
    info, created = answer
    await run_in_threadpool(_sync(request).added, info.id, store.root / info.id)
    return _answer(info, created)


def _limit(request: Request) -> int:
    return int(request.app.state.settings.dataset_max_mib * MIB)


def _answer(info: DatasetInfo, created: bool) -> JSONResponse:
    return JSONResponse(
        info.model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/datasets/{info.id}"},
    )


@router.post(
    "/v1/datasets",
    status_code=201,
    responses={
        200: {"model": DatasetInfo, "description": "The same file was already a dataset."},
        201: {"model": DatasetInfo, "description": "A new dataset."},
        413: {"description": "The file is over dataset_max_mib."},
    },
    openapi_extra={
        "requestBody": {
            "description": "The file (CSV, TSV, JSONL or Parquet) as the body, in a form's "
            "`file` field, or JSON naming a path or an s3:// source.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
                "application/json": {"schema": DatasetImport.model_json_schema()},
            },
        }
    },
)
async def add_dataset(
    request: Request,
    name: Annotated[
        str | None,
        Query(max_length=200, description="The file's name (its suffix names its format)."),
    ] = None,
) -> Response:
    """Upload or import a table; the answer is the dataset's record."""
    store, limit = _store(request), _limit(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return await _import(request, store, limit)
    if kind == "multipart/form-data":
        return await _form_upload(request, store, limit)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    answer = await store.add_stream(
        body(),
        name=name or "upload",
        max_bytes=limit,
        fmt=TEXT_TYPES.get(kind),  # type: ignore[arg-type]
    )
    return await _synced(request, store, answer)


async def _form_upload(request: Request, store: DatasetStore, limit: int) -> Response:
    from starlette.datastructures import UploadFile

    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("A form upload needs the file in its 'file' field.", field="file")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await upload.read(1 << 20):
                yield chunk

        kind = (upload.content_type or "").split(";")[0].strip().lower()
        answer = await store.add_stream(
            chunks(),
            name=upload.filename or "upload",
            max_bytes=limit,
            fmt=TEXT_TYPES.get(kind),  # type: ignore[arg-type]
        )
    return await _synced(request, store, answer)


async def _import(request: Request, store: DatasetStore, limit: int) -> Response:
    try:
        req = DatasetImport.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ValidationFailed(f"{where}: {first['msg']}", field=where) from None
    if (req.path is None) == (req.source is None):
        raise InvalidRequest("Name the file with exactly one of 'path' or 'source'.", field="path")
    settings = request.app.state.settings
    if req.path is not None:
        from fnbundle.loading import resolve_inside_roots

        path = resolve_inside_roots(req.path, settings.data_roots, field="path")
        if not path.is_file():
            raise InvalidRequest(f"{req.path!r} is not a file inside the data roots.", field="path")
        answer = await run_in_threadpool(
            store.add_file, path, name=req.name, max_bytes=limit, source=f"path:{req.path}"
        )
        return await _synced(request, store, answer)
    from fnbundle.s3 import import_s3

    answer = await run_in_threadpool(import_s3, str(req.source), store, settings, req.name)
    return await _synced(request, store, answer)


@router.get("/v1/datasets")
async def list_datasets(request: Request) -> DatasetList:
    """Every dataset, newest first."""
    return DatasetList(data=await run_in_threadpool((await _refreshed(request)).list))


@router.get("/v1/datasets/{dataset_id}")
async def get_dataset(dataset_id: DatasetId, request: Request) -> DatasetInfo:
    return (await _refreshed(request)).get(dataset_id)


@router.get("/v1/datasets/{dataset_id}/schema")
async def get_schema(dataset_id: DatasetId, request: Request) -> TableSchema:
    """Each column's detected type, missing share and role; the proposed target and task."""
    return await run_in_threadpool((await _refreshed(request)).schema, dataset_id)


@router.delete("/v1/datasets/{dataset_id}", status_code=204)
async def delete_dataset(dataset_id: DatasetId, request: Request) -> Response:
    await run_in_threadpool((await _refreshed(request)).delete, dataset_id)
    await run_in_threadpool(_sync(request).deleted, dataset_id)
    return Response(status_code=204)
