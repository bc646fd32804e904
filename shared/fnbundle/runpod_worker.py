"""What every RunPod handler in ``handlers/`` shares: where the network volume puts the
store, which models a serving worker preloads, how many jobs a worker runs at once, and
how a response body becomes a job output.

Key rules: settings the environment leaves unset point at the network volume when one is
mounted; a serving worker preloads its endpoint's model unless ``FNB_PRELOAD`` names others
(Modal's classify app uses the same rule); ``FNB_WORKER_CONCURRENCY`` (set by deploy in
the template's environment) wins over the concurrency baked into the image's
``deploy/endpoints.toml``; an error body's object travels as a JSON string, because RunPod
carries a failed job's error as a string (its dev server refuses anything else). Importing
this module imports no runpod, torch or onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fnbundle.endpoints import get_endpoint
from fnbundle.settings import Settings

VOLUME = Path("/runpod-volume")  # where RunPod mounts an endpoint's network volume


def worker_settings(volume: Path = VOLUME) -> Settings:
    """``FNB_*`` settings; those left unset point at the network volume when one is mounted."""
    settings = Settings()
    if not volume.is_dir():
        return settings
    on_volume: dict[str, Any] = {"store": volume / "fnbundle" / "store", "data_roots": [volume]}
    unset = {key: value for key, value in on_volume.items() if key not in settings.model_fields_set}
    return settings.model_copy(update=unset) if unset else settings


def preload_endpoint_model(settings: Settings, model: str | None) -> Settings:
    """``settings`` preloading ``model`` (an endpoint's model) unless ``FNB_PRELOAD`` was set:
    loading every model in the store would slow a cold start and hold memory for models
    other endpoints serve."""
    if model and "preload" not in settings.model_fields_set:
        return settings.model_copy(update={"preload": [model]})
    return settings


def worker_concurrency(settings: Settings, endpoint: str) -> int:
    """Jobs one worker runs at once: ``FNB_WORKER_CONCURRENCY``, else the declaration's."""
    if settings.worker_concurrency is not None:
        return settings.worker_concurrency
    return get_endpoint(endpoint).runpod.concurrency


def job_output(body: dict[str, Any]) -> dict[str, Any]:
    """A response body as a job output: ``{"error": {...}}`` becomes ``{"error": "<JSON>"}``."""
    if "error" in body:
        return {"error": json.dumps(body["error"])}
    return body
