"""The one declaration of every deployed endpoint: ``deploy/endpoints.toml``.

Modal apps read their decorator settings from it at import time, the RunPod deploy reads
its template and endpoint settings from it, and ``deploy/deploy.py`` publishes it. Key
rule: no scaling number is written anywhere else; a value outside what the platform
accepts is an error here, before anything is published.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fnbundle.errors import InvalidRequest, NotFound

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "deploy" / "endpoints.toml"
# Inside a Modal container or a RunPod image the declaration is copied next to the code.
CONTAINER_PATHS = (Path("/root/deploy/endpoints.toml"), Path("/app/deploy/endpoints.toml"))

MODAL_GPUS = frozenset(
    {"T4", "L4", "A10G", "A10", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H200", "B200"}
)
MINUTES = 60  # seconds


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModalSpec(_Spec):
    app: str
    file: str
    gpu: str | None = Field(None, description="Modal GPU type; None runs on CPU.")
    cpu: float = Field(1.0, gt=0, le=64)
    memory_mib: int = Field(2048, ge=128)
    min_containers: int = Field(0, ge=0)
    max_containers: int = Field(10, ge=1)
    buffer_containers: int = Field(0, ge=0)
    # Modal accepts 2 s to 20 min of idle time before a container scales down.
    scaledown_window_s: int = Field(5 * MINUTES, ge=2, le=20 * MINUTES)
    max_inputs: int = Field(1, ge=1, le=1000, description="Concurrent inputs per container.")
    target_inputs: int | None = Field(None, ge=1)
    timeout_s: int = Field(60, ge=10, le=24 * 60 * MINUTES)
    retries: int = Field(0, ge=0, le=10)
    enable_memory_snapshot: bool = False

    def model_post_init(self, _: object) -> None:
        if self.gpu is not None and self.gpu.split(":")[0] not in MODAL_GPUS:
            raise ValueError(
                f"unknown Modal GPU {self.gpu!r}; known: {', '.join(sorted(MODAL_GPUS))}"
            )


class RunPodSpec(_Spec):
    handler: str
    image: str
    compute: Literal["GPU", "CPU"] = "GPU"
    gpu_ids: list[str] = Field(default_factory=list, description="RunPod GPU pool ids.")
    cpu_flavor_ids: list[str] = Field(default_factory=list)
    workers_min: int = Field(0, ge=0)
    workers_max: int = Field(3, ge=1)
    # RunPod keeps an idle worker between 1 s and 1 h before scaling it down.
    idle_timeout_s: int = Field(5, ge=1, le=60 * MINUTES)
    execution_timeout_s: int = Field(600, ge=5, le=7 * 24 * 60 * MINUTES)
    flashboot: bool = True
    scaler_type: Literal["QUEUE_DELAY", "REQUEST_COUNT"] = "QUEUE_DELAY"
    scaler_value: int = Field(4, ge=1)
    concurrency: int = Field(1, ge=1, le=1000, description="Jobs one worker runs at once.")
    container_disk_gb: int = Field(10, ge=5)
    network_volume_gb: int = Field(20, ge=0)


class Endpoint(_Spec):
    name: str
    task: Literal[
        "classify", "train_classifier", "embed", "generate", "train_tabular", "finetune_lora"
    ]
    model: str | None = Field(None, description="Model the endpoint preloads.")
    description: str = ""
    modal: ModalSpec
    runpod: RunPodSpec


def endpoints_path() -> Path:
    for path in (DEFAULT_PATH, *CONTAINER_PATHS):
        if path.is_file():
            return path
    return DEFAULT_PATH


@lru_cache(maxsize=4)
def load_endpoints(path: Path | None = None) -> dict[str, Endpoint]:
    """Every endpoint in the declaration, validated."""
    path = path or endpoints_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"Endpoint declaration {path} not found.") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{path} is not valid TOML: {exc}") from None
    endpoints = {}
    for name, table in data.get("endpoints", {}).items():
        try:
            endpoints[name] = Endpoint(name=name, **table)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidRequest(f"{path}: endpoints.{name}.{where}: {first['msg']}") from None
    return endpoints


def get_endpoint(name: str, path: Path | None = None) -> Endpoint:
    endpoints = load_endpoints(path)
    if name not in endpoints:
        raise NotFound(f"Unknown endpoint {name!r}; declared: {', '.join(sorted(endpoints))}.")
    return endpoints[name]
