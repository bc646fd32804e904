"""What every RunPod handler in ``handlers/`` shares (Modal's apps borrow the preload and
CUDA rules): where the network volume puts the store, which models a serving worker
preloads, how many jobs a worker runs at once, whether a GPU worker can use its GPU, and
how a response body becomes a job output.

Key rules: settings the environment leaves unset point at the network volume when one is
mounted; a serving worker preloads its endpoint's model unless ``FNB_PRELOAD`` names others
(Modal's classify app uses the same rule); ``FNB_WORKER_CONCURRENCY`` (set by deploy in
the template's environment) wins over the concurrency baked into the image's
``deploy/endpoints.toml``; a GPU worker refuses to train without a usable CUDA device
(:func:`require_cuda`) rather than train on its CPU; an error body's object travels as a
JSON string, because RunPod carries a failed job's error as a string (its dev server
refuses anything else). Importing this module imports no runpod, torch or onnxruntime
(``require_cuda`` imports torch when it runs).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fnbundle.endpoints import get_endpoint
from fnbundle.errors import TrainingFailed
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


def driver_cuda_version() -> str | None:
    """The newest CUDA version the host's NVIDIA driver supports ("12.4"), or None without
    a driver. Asks the driver library itself: no CUDA context, no torch."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def require_cuda(cuda_versions: Sequence[str] = ()) -> None:
    """Raise TrainingFailed, naming the cause, unless torch can use a CUDA device here.

    A GPU worker calls it before a training run: torch silently falls back to the CPU
    when the host driver is older than its CUDA build, and the GPU would be billed for a
    CPU run. ``cuda_versions`` are the versions the endpoint allows (for the message)."""
    import torch

    if torch.cuda.is_available():
        return
    build, driver = torch.version.cuda, driver_cuda_version()
    if build is None:
        cause = f"this image's torch {torch.__version__} is a CPU-only build"
    elif driver is None:
        cause = f"no NVIDIA driver was found (torch {torch.__version__} is built for CUDA {build})"
    elif _version(driver) < _version(build):
        cause = (
            f"torch {torch.__version__} is built for CUDA {build}, but the host driver supports "
            f"CUDA {driver} at most (an old driver)"
        )
    else:
        cause = (
            f"torch (CUDA {build}) sees no CUDA device although the driver supports CUDA {driver}"
        )
    allowed = f" This endpoint allows CUDA {', '.join(cuda_versions)}." if cuda_versions else ""
    raise TrainingFailed(
        f"No usable CUDA device on this GPU worker: {cause}.{allowed} The job is not trained "
        "on the CPU instead, so the GPU is not billed for a CPU run; retry it to get another "
        "worker."
    )


def job_output(body: dict[str, Any]) -> dict[str, Any]:
    """A response body as a job output: ``{"error": {...}}`` becomes ``{"error": "<JSON>"}``."""
    if "error" in body:
        return {"error": json.dumps(body["error"])}
    return body
