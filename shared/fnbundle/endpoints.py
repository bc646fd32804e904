"""The one declaration of every deployed endpoint: ``deploy/endpoints.toml``.

Modal apps read their decorator settings from it at import time, RunPod handlers read
their concurrency from it, and ``deploy/deploy.py`` publishes it. Key rule: no scaling
number is written anywhere else, and a value the platform would refuse (an unknown GPU,
a scale-down window outside its range) is an error here, before anything is published.

The ranges below are the platforms' own: Modal 1.6 refuses a ``scaledown_window``
outside 2..3600 s and more than 8 GPUs per container (4 for A10); RunPod serverless
takes GPU *pool* ids (not GPU type names), the CPU instance ids it lists (such as
``cpu3c-2-4``), the CUDA versions it lists, an idle timeout of 1 s to 1 h and an execution
timeout of at most 24 h.

An ``llm`` table (a language model served on vLLM) declares the base's size and how it is
served; its GPUs on both platforms must hold the sizing's estimate
(:mod:`fnbundle.tasks.generate.sizing`), or the declaration is refused with the numbers.

A second rule: every key a table declares is applied somewhere (a Modal app's decorators,
RunPod's template or endpoint, the worker's environment), or it is refused here. A key
that nothing applies would pass ``--dry-run`` and change nothing.
"""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from fnbundle.errors import FnbError, InvalidRequest, NotFound
from fnbundle.platforms.catalogue import (
    MODAL_ALIASES,
    MODAL_MAX_GPUS,
    MODAL_MAX_GPUS_A10,
    RUNPOD_CPU_INSTANCES,
    RUNPOD_CUDA_VERSIONS,
    modal_gpu_types,
    runpod_gpu_pools,
)

if TYPE_CHECKING:
    from fnbundle.tasks.generate.sizing import ServingMemory

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "deploy" / "endpoints.toml"
# Inside a Modal container or a RunPod image the declaration is copied next to the code:
# Modal images put local files under /root, the RunPod Dockerfile works in /app.
CONTAINER_PATHS = (Path("/root/deploy/endpoints.toml"), Path("/app/deploy/endpoints.toml"))

MINUTES = 60  # seconds
HOURS = 60 * MINUTES  # seconds

# GPU names come from the one catalogue that also holds their prices: Modal GPU types
# (matched case-insensitively, as Modal does) and RunPod serverless GPU pools (an endpoint
# lists pools in order of preference).
MODAL_GPUS = modal_gpu_types()

RUNPOD_GPU_POOLS = runpod_gpu_pools()
# Modal keys a training app does not apply, and why.
MODAL_KEYS_NOT_FOR_TRAINING = {
    "max_inputs": "it runs one job per container (no @modal.concurrent)",
    "target_inputs": "it runs one job per container (no @modal.concurrent)",
    "buffer_containers": "it keeps no spare containers",
    "enable_memory_snapshot": "it takes no memory snapshot",
    # Modal restarts a preempted input by itself; a retry would only rerun a timed-out run,
    # which instead ends timed_out with a checkpoint that POST /v1/jobs/<id>/retry resumes.
    "retries": "it runs with retries=0 and resumes a job from its checkpoint instead",
}
# Worker environment that deploy sets from the declaration; an ``env`` table may not set it.
DEPLOY_SET_ENV = {"FNB_WORKER_CONCURRENCY": "concurrency"}
# Keys that used to be declared but that nothing applies, and what to do instead.
RETIRED_RUNPOD_KEYS = {
    "network_volume_gb": (
        "nothing creates a volume of that size: create the network volume once (RunPod "
        "console > Storage) and pass its id with --network-volume; a redeploy keeps the "
        "endpoint's current volume"
    ),
}

ENDPOINT_NAME = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
# A repository path (no tag, no registry): lower-case components split by / . _ -
IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _entry_file(value: str, folder: str) -> str:
    """A path like ``functions/classify.py``: relative, inside ``folder``, a Python file."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or len(path.parts) != 2:
        raise ValueError(f"must be {folder}/<name>.py, got {value!r}")
    if path.parts[0] != folder or path.suffix != ".py":
        raise ValueError(f"must be {folder}/<name>.py, got {value!r}")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModalSpec(_Spec):
    app: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Modal app name.")
    file: str = Field(description="The app's file, relative to the repository root.")
    gpu: str | None = Field(None, description="Modal GPU type, e.g. 'L4' or 'H100:2'; None = CPU.")
    cpu: float = Field(1.0, gt=0, le=64, description="Physical cores reserved per container.")
    memory_mib: int = Field(2048, ge=128, description="Memory reserved per container (MiB).")
    min_containers: int = Field(0, ge=0, description="Warm containers kept when idle.")
    max_containers: int = Field(10, ge=1)
    buffer_containers: int = Field(0, ge=0, description="Spare containers while active.")
    # Modal 1.6 accepts 2 s to 1 h of idle time before a container scales down.
    scaledown_window_s: int = Field(5 * MINUTES, ge=2, le=1 * HOURS)
    max_inputs: int = Field(1, ge=1, le=1000, description="Concurrent inputs per container.")
    target_inputs: int | None = Field(None, ge=1, description="Autoscaler's target per container.")
    # At least 10 s: a request has to survive a container start; Modal's ceiling is 24 h.
    timeout_s: int = Field(60, ge=10, le=24 * HOURS)
    retries: int = Field(0, ge=0, le=10)
    enable_memory_snapshot: bool = False
    # A training app's web endpoint (the jobs API and its event streams); None = timeout_s.
    # A serving app's web endpoint is its class, so there timeout_s applies.
    web_timeout_s: int | None = Field(None, ge=10, le=24 * HOURS)

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        return _entry_file(value, "functions")

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str | None) -> str | None:
        if value is None:
            return None
        kind, _, count_text = value.partition(":")
        if kind.upper() not in MODAL_GPUS:
            raise ValueError(f"unknown Modal GPU {kind!r}; known: {', '.join(sorted(MODAL_GPUS))}")
        if count_text:
            most = MODAL_MAX_GPUS_A10 if kind.upper() in {"A10", "A10G"} else MODAL_MAX_GPUS
            if not count_text.isdigit() or not 1 <= int(count_text) <= most:
                raise ValueError(f"GPU count in {value!r} must be 1..{most}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModalSpec:
        if self.min_containers > self.max_containers:
            raise ValueError("min_containers is above max_containers")
        if self.target_inputs is not None and self.target_inputs > self.max_inputs:
            raise ValueError("target_inputs is above max_inputs (Modal refuses it)")
        return self


class RunPodSpec(_Spec):
    handler: str = Field(description="The handler's file, relative to the repository root.")
    image: str = Field(description="Image repository name; deploy adds registry and tag.")
    compute: Literal["GPU", "CPU"] = "GPU"
    gpu_ids: list[str] = Field(default_factory=list, description="GPU pools, preferred first.")
    cpu_flavor_ids: list[str] = Field(
        default_factory=list, description="CPU instance ids such as cpu3c-2-4 (CPU endpoints)."
    )
    workers_min: int = Field(0, ge=0, description="Always-on workers (billed while idle).")
    workers_max: int = Field(3, ge=1)
    # RunPod keeps an idle worker between 1 s and 1 h before scaling it down.
    idle_timeout_s: int = Field(5, ge=1, le=1 * HOURS)
    # RunPod's execution timeout tops out at 24 h.
    execution_timeout_s: int = Field(600, ge=5, le=24 * HOURS)
    flashboot: bool = True
    scaler_type: Literal["QUEUE_DELAY", "REQUEST_COUNT"] = "QUEUE_DELAY"
    scaler_value: int = Field(
        4, ge=1, description="Seconds of queue delay, or queued requests per worker."
    )
    concurrency: int = Field(1, ge=1, le=1000, description="Jobs one worker runs at once.")
    container_disk_gb: int = Field(10, ge=5, le=1000)
    cuda_versions: list[str] = Field(
        default_factory=list,
        description="CUDA versions the host driver must support (GPU endpoints), e.g. '12.8'.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Worker environment.")

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        return _entry_file(value, "handlers")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_NAME.match(value):
            raise ValueError(
                f"image {value!r} must be a lower-case repository name without registry or tag"
            )
        return value

    @field_validator("gpu_ids")
    @classmethod
    def _gpu_ids(cls, value: list[str]) -> list[str]:
        unknown = [pool for pool in value if pool not in RUNPOD_GPU_POOLS]
        if unknown:
            raise ValueError(
                f"unknown RunPod GPU pool {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(RUNPOD_GPU_POOLS)}"
            )
        return value

    @field_validator("cpu_flavor_ids")
    @classmethod
    def _cpu_ids(cls, value: list[str]) -> list[str]:
        bad = [cpu for cpu in value if cpu not in RUNPOD_CPU_INSTANCES]
        if bad:
            raise ValueError(
                f"unknown RunPod CPU instance {', '.join(map(repr, bad))}; "
                f"known: {', '.join(RUNPOD_CPU_INSTANCES)}"
            )
        return value

    @field_validator("cuda_versions")
    @classmethod
    def _cuda_versions(cls, value: list[str]) -> list[str]:
        bad = [version for version in value if version not in RUNPOD_CUDA_VERSIONS]
        if bad:
            raise ValueError(
                f"unknown CUDA version {', '.join(map(repr, bad))}; "
                f"RunPod offers: {', '.join(RUNPOD_CUDA_VERSIONS)}"
            )
        if len(set(value)) != len(value):
            raise ValueError("a CUDA version is listed twice")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if not ENV_NAME.match(key)]
        if bad:
            raise ValueError(f"environment variable names must be UPPER_CASE: {bad}")
        for key, field in DEPLOY_SET_ENV.items():
            if key in value:
                raise ValueError(f"{key} is set by deploy from runpod.{field}: set that instead")
        return value

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: object) -> object:
        if isinstance(data, dict):
            for key, instead in RETIRED_RUNPOD_KEYS.items():
                if key in data:
                    raise ValueError(f"{key} is not applied: {instead}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RunPodSpec:
        if self.compute == "GPU" and (not self.gpu_ids or self.cpu_flavor_ids):
            raise ValueError("a GPU endpoint needs gpu_ids and no cpu_flavor_ids")
        if self.compute == "CPU" and (not self.cpu_flavor_ids or self.gpu_ids):
            raise ValueError("a CPU endpoint needs cpu_flavor_ids and no gpu_ids")
        if self.compute == "GPU" and not self.cuda_versions:
            raise ValueError(
                "a GPU endpoint needs cuda_versions (the CUDA versions its image runs on, "
                'e.g. ["12.8", "12.9"]): without them RunPod may start it on a host '
                "whose driver is too old, and the worker trains on CPU"
            )
        if self.compute == "CPU" and self.cuda_versions:
            raise ValueError("cuda_versions is for GPU endpoints; a CPU endpoint has no CUDA")
        if self.workers_min > self.workers_max:
            raise ValueError("workers_min is above workers_max")
        return self


class LlmSpec(_Spec):
    """A language model served on vLLM: the base's size (from its config.json and weights,
    so that deploy sizes it without the store) and how it is served. The size picks and
    checks the GPU (:mod:`fnbundle.tasks.generate.sizing`); the serving keys reach the
    engine as settings (:data:`LLM_ENV`)."""

    base: str = Field(description="What the endpoint's model was imported from (hf:org/name).")
    parameters: int = Field(gt=0)
    layers: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    hidden: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    max_context: int | None = Field(None, gt=0, description="The model's own context limit.")
    context_length: int = Field(gt=0, description="Prompt plus completion tokens at most.")
    max_concurrent_sequences: int = Field(gt=0, le=1024, description="vLLM's max_num_seqs.")
    gpu_memory_utilization: float = Field(0.9, gt=0.1, le=0.98)
    max_adapters: int = Field(4, ge=1, le=64, description="LoRA adapters on the GPU at once.")
    max_lora_rank: int = Field(16, description="Largest LoRA rank served.")

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        from fnbundle.tasks.generate.sizing import VLLM_LORA_RANKS

        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"vLLM serves LoRA ranks {', '.join(map(str, VLLM_LORA_RANKS))}")
        return value

    def memory(self) -> ServingMemory:
        from fnbundle.tasks.generate.sizing import LlmShape, serving_memory

        shape = LlmShape(**self.model_dump(include=set(LlmShape.model_fields)))
        return serving_memory(
            shape,
            context_length=self.context_length,
            sequences=self.max_concurrent_sequences,
            max_adapters=self.max_adapters,
            max_lora_rank=self.max_lora_rank,
        )


# The settings each serving key of an ``llm`` table becomes, in a Modal container's and a
# RunPod worker's environment.
LLM_ENV = {
    "context_length": "FNB_VLLM_MAX_MODEL_LEN",
    "max_concurrent_sequences": "FNB_GENERATE_MAX_BATCH",
    "max_adapters": "FNB_GENERATE_MAX_ADAPTERS",
    "gpu_memory_utilization": "FNB_VLLM_GPU_MEMORY_UTILIZATION",
    "max_lora_rank": "FNB_VLLM_MAX_LORA_RANK",
}
LLM_BACKEND_ENV = {"FNB_GENERATE_BACKEND": "vllm"}  # an llm endpoint serves on vLLM


def llm_env(llm: LlmSpec | None) -> dict[str, str]:
    """The environment that applies an ``llm`` table's serving keys; empty without one."""
    if llm is None:
        return {}
    return {**LLM_BACKEND_ENV, **{env: str(getattr(llm, key)) for key, env in LLM_ENV.items()}}


class Endpoint(_Spec):
    name: str
    task: str = Field(description="The task it runs: a slug in fnbundle.tasks.REGISTRY.")
    model: str | None = Field(None, description="Model the endpoint preloads.")
    description: str = ""
    modal: ModalSpec
    runpod: RunPodSpec
    llm: LlmSpec | None = Field(None, description="A language model served on vLLM.")

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        from fnbundle.tasks import REGISTRY  # the registry names every task there is

        if value not in REGISTRY.slugs():
            raise ValueError(
                f"unknown task {value!r}; the registry has {', '.join(REGISTRY.slugs())}"
            )
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ENDPOINT_NAME.match(value):
            raise ValueError(f"endpoint name {value!r} must be lower_snake_case")
        return value

    def llm_gpus(self) -> dict[str, Any] | None:
        """An LLM endpoint's memory breakdown and GPUs, as deploy shows them; None without
        an ``llm`` table."""
        if self.llm is None:
            return None
        from fnbundle.tasks.generate.sizing import endpoint_gpus

        return endpoint_gpus(
            self.llm.memory(),
            self.llm.gpu_memory_utilization,
            modal_gpu=self.modal.gpu,
            runpod_pools=list(self.runpod.gpu_ids),
        )

    @model_validator(mode="after")
    def _llm_fits(self) -> Endpoint:
        """An LLM endpoint's GPUs on both platforms hold its model (sizing's estimate)."""
        if self.llm is None:
            return self
        from fnbundle.platforms.catalogue import get_gpu
        from fnbundle.tasks.generate.sizing import fits, too_small

        try:
            memory = self.llm.memory()
        except FnbError as exc:
            raise ValueError(f"llm: {exc.message}") from None
        if self.runpod.compute != "GPU":
            raise ValueError("an llm endpoint runs on a GPU: set runpod.gpu_ids")
        overridden = sorted(set(llm_env(self.llm)) & set(self.runpod.env))
        if overridden:
            raise ValueError(f"runpod.env sets {', '.join(overridden)}: set it in the llm table")
        utilization = self.llm.gpu_memory_utilization
        gpus = [get_gpu("runpod", pool) for pool in self.runpod.gpu_ids]
        if self.modal.gpu is not None:  # else the Modal app takes the cheapest that fits
            kind, _, count = self.modal.gpu.partition(":")
            if count not in {"", "1"}:
                raise ValueError("an llm endpoint serves on one GPU (no tensor parallelism)")
            try:
                gpus.insert(0, get_gpu("modal", MODAL_ALIASES.get(kind.upper(), kind)))
            except FnbError:
                raise ValueError(f"modal.gpu {kind!r} has no known memory size to check") from None
        small = [
            too_small(g, memory, utilization) for g in gpus if not fits(g, memory, utilization)
        ]
        if small:
            raise ValueError("; ".join(small))
        return self

    @model_validator(mode="after")
    def _applied(self) -> Endpoint:
        """Refuse Modal keys this task's app does not apply."""
        from fnbundle.tasks import REGISTRY

        declared = self.modal.model_fields_set
        # Serving tasks answer one request at a time; training tasks are jobs, served on
        # Modal by a jobs web app (the job routes) next to the training function.
        if self.task in REGISTRY.serving:
            if "web_timeout_s" in declared:
                raise ValueError(
                    "modal.web_timeout_s: a serving app's web endpoint is its class, whose "
                    "timeout is modal.timeout_s; web_timeout_s is for a training app's jobs API"
                )
            return self
        unapplied = [key for key in MODAL_KEYS_NOT_FOR_TRAINING if key in declared]
        if unapplied:
            reasons = "; ".join(
                f"modal.{key}: {MODAL_KEYS_NOT_FOR_TRAINING[key]}" for key in unapplied
            )
            raise ValueError(f"a training app does not apply these keys, remove them: {reasons}")
        return self


def endpoints_path() -> Path:
    for path in (DEFAULT_PATH, *CONTAINER_PATHS):
        if path.is_file():
            return path
    return DEFAULT_PATH


def _describe(errors: list[ErrorDetails], path: Path, name: str) -> str:
    """Every problem of one endpoint table, each with its dotted key."""
    lines = []
    for error in errors:
        where = ".".join(["endpoints", name, *(str(part) for part in error["loc"])])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return f"{path}: " + "; ".join(lines)


def load_endpoints(path: Path | None = None) -> dict[str, Endpoint]:
    """Every endpoint in the declaration, validated; re-read only when the file changes."""
    path = path or endpoints_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise NotFound(f"Endpoint declaration {path} not found.") from None
    return _load(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(path: Path, _mtime_ns: int, _size: int) -> dict[str, Endpoint]:
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
            raise InvalidRequest(_describe(exc.errors(), path, name)) from None
        except TypeError as exc:  # a table key that collides with ``name``
            raise InvalidRequest(f"{path}: endpoints.{name}: {exc}") from None
    return endpoints


def get_endpoint(name: str, path: Path | None = None) -> Endpoint:
    endpoints = load_endpoints(path)
    if name not in endpoints:
        raise NotFound(f"Unknown endpoint {name!r}; declared: {', '.join(sorted(endpoints))}.")
    return endpoints[name]
