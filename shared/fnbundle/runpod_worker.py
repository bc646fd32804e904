"""What every RunPod handler in ``handlers/`` shares: where the network volume puts the
store, and how a response body becomes a job output.

Key rules: settings the environment leaves unset point at the network volume when one is
mounted; an error body's object travels as a JSON string, because RunPod carries a failed
job's error as a string (its dev server refuses anything else). Importing this module
imports no runpod, torch or onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def job_output(body: dict[str, Any]) -> dict[str, Any]:
    """A response body as a job output: ``{"error": {...}}`` becomes ``{"error": "<JSON>"}``."""
    if "error" in body:
        return {"error": json.dumps(body["error"])}
    return body
