"""GET /v1/models and GET /v1/models/{model}: what the store holds, in OpenAI's list shape
(``{"object": "list", "data": [{"id", "object": "model", "created": <unix s>, "owned_by"}]}``,
so ``client.models.list()`` reads it, with our fields beside: ``created_at`` is the ISO
time); GET /v1/models/{model}/files/{path}: one file of a model (its pictures, its metrics).

Key rule: each model says its state (``not_loaded``, ``loading``, ``ready``, ``failed``) and,
when it failed, the ``reason`` a request for it is answered with (a 503); its task (from
the registry) adds its own fields (a classifier's labels). A model whose task no serving
task declares is listed as ``failed`` with that reason. GET /v1/models/{model}/export
answers a zip of the model in a browser runtime's layout (:mod:`fnbundle.export_web`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from fnbundle.errors import FnbError, NotFound
from fnbundle.store import NAME_RE
from fnbundle.tasks import REGISTRY

router = APIRouter(tags=["models"])
OWNER = "fnbundle"  # OpenAI's owned_by


def _unix_s(iso: object) -> int:
    """An ISO timestamp as Unix seconds (OpenAI's ``created``); 0 when there is none."""
    try:
        return int(datetime.fromisoformat(str(iso)).timestamp())
    except ValueError:
        return 0


def _describe(request: Request, ref: str, latest: set[str]) -> dict[str, Any]:
    host = request.app.state.host
    artifact = host.artifact(ref)
    summary = artifact.summary()
    described: dict[str, Any] = {
        "id": artifact.id,
        "object": "model",
        "created": _unix_s(summary.get("created")),
        "owned_by": OWNER,
        **{k: v for k, v in summary.items() if k not in {"id", "created"}},
        "created_at": summary.get("created"),
        "latest": artifact.id in latest,
    }
    try:
        task = REGISTRY.serving_task(artifact.task)
        described.update(task.describe(artifact))
        served_by = task.served_by(artifact)  # an adapter: the base it is served on
        key = (served_by, task.pick_backend(artifact, task.default_backend(host.settings)))
    except FnbError as exc:  # no task serves it, or no weights its backend can use
        return {**described, "state": "failed", "reason": exc.message}
    described["state"] = host.state(key) or "not_loaded"
    backend = host.served_backend(key)  # ``auto`` may resolve at load (OpenVINO's gate)
    if backend is not None:
        described["backend"] = backend
    reason = host.reason(key)
    if reason is not None:
        described["reason"] = reason
    return described


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model version in the store, newest last; ``latest`` marks what a name serves."""
    store = request.app.state.host.store
    latest = set(store.latest_ids().values())
    return {"object": "list", "data": [_describe(request, a.id, latest) for a in store.list()]}


# The store's name rule, documented (not enforced here): the store answers a name it
# rejects with a 400 naming the rule, like every other route that takes a model name.
ModelName = Annotated[
    str,
    Path(
        description="A model name (its newest version) or version id: 1-80 lowercase "
        "letters, digits, '-' or '_', starting with a letter or digit.",
        json_schema_extra={"pattern": NAME_RE.pattern, "maxLength": 80},
    ),
]


@router.get("/v1/models/{model}")
async def get_model(model: ModelName, request: Request) -> dict[str, Any]:
    """One model (by name or version id) with its metrics and manifest summary."""
    store = request.app.state.host.store
    return _describe(request, model, set(store.latest_ids().values()))


MEDIA_TYPES = {".png": "image/png", ".json": "application/json", ".csv": "text/csv",
               ".txt": "text/plain; charset=utf-8"}  # fmt: skip


@router.get(
    "/v1/models/{model}/files/{path:path}",
    response_class=FileResponse,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, 404: {}},
)
async def get_model_file(model: ModelName, path: str, request: Request) -> FileResponse:
    """One file the model's manifest lists (``pictures/leaderboard.png``, ``metrics.json``);
    weights and other files are served as bytes. Anything else is a 404."""
    from fnbundle.store import inside_artifact

    artifact = request.app.state.host.artifact(model)
    listed = artifact.manifest.get("files") or {}
    if path not in listed:
        raise NotFound(f"Model {artifact.id} has no file {path[:200]!r}.", field="path")
    file = inside_artifact(artifact.id, artifact.path, path)
    media = MEDIA_TYPES.get(file.suffix, "application/octet-stream")
    return FileResponse(
        file, media_type=media, filename=file.name if media.endswith("stream") else None
    )


@router.get(
    "/v1/models/{model}/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, 400: {}, 404: {}},
)
async def export_model(
    model: ModelName,
    request: Request,
    fmt: Annotated[
        str, Query(alias="format", description="Export format: transformers.js.")
    ] = "transformers.js",
) -> FileResponse:
    """A text classifier or embedder as a zip of the folder Transformers.js loads
    (``config.json``, tokenizer files, ``onnx/model.onnx``, ``onnx/model_quantized.onnx``)
    under a folder named after the version id; other tasks and formats are a 400."""
    import os
    import tempfile
    from pathlib import Path as FilePath

    from fnbundle.export_web import check_format, export_zip, pipeline_for

    check_format(fmt)
    host = request.app.state.host
    artifact = host.artifact(model)
    pipeline_for(artifact)
    fd, name = tempfile.mkstemp(prefix="fnb-export-", suffix=".zip")
    os.close(fd)
    try:
        await run_in_threadpool(export_zip, artifact, FilePath(name), host.settings)
    except BaseException:
        os.unlink(name)
        raise
    return FileResponse(
        name,
        media_type="application/zip",
        filename=f"{artifact.id}-transformers.js.zip",
        background=BackgroundTask(os.unlink, name),
    )
