"""What serving a causal LM on vLLM needs in GPU memory, and the cheapest GPU that has it.

* The model's size: parameters (the safetensors headers, or the manifest's ``parameters``),
  layers, key/value heads and head width (``config.json``), the weights' dtype.
* A memory estimate: weights (parameters x dtype bytes), the KV cache for every sequence
  at full context (``2 x layers x kv_heads x head_dim x dtype bytes`` per token, times
  ``context_length x concurrent sequences``), the LoRA slots vLLM reserves for
  ``max_adapters`` adapters of ``max_lora_rank``, and a fixed runtime overhead.
* The GPU: of :mod:`fnbundle.platforms.catalogue`, the cheapest whose memory times vLLM's
  ``gpu_memory_utilization`` holds the estimate; a model that fits none is refused with
  the numbers in GiB.

Key rules: nothing here imports torch or vLLM or reads a weight (only ``config.json`` and
the JSON header of each safetensors file), so the deploy plan and the endpoint check size
a 70B model in milliseconds. Estimates err high: every sequence may hold a full context
(vLLM shares one KV pool, so it admits more when contexts are short), and a catalogue
card's nominal size is read as GB (10^9 bytes), which is never more than CUDA reports.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fnbundle.errors import InvalidRequest
from fnbundle.platforms.catalogue import CATALOGUE, GIB, Gpu, check_platform
from fnbundle.platforms.sizing import DTYPE_BYTES, read_safetensors_header

GB = 10**9  # bytes: the unit of a card's nominal size ("24 GB" is 22.4 GiB as CUDA sees it)
# CUDA context, the CUDA graphs vLLM captures, the sampler and the activations of its
# profiling pass at the default batched-token budget: 1 to 2 GiB for 7-8B models in vLLM's
# start-up log ("model weights ... GiB; non_torch_memory ...; activation peak ...").
RUNTIME_OVERHEAD = 2 * GIB  # bytes
# config.json dtype names -> bytes per element; safetensors names are in DTYPE_BYTES.
CONFIG_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8": 1}
# vLLM's LoRA kernels are built for these ranks (its --max-lora-rank choices).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LlmShape(BaseModel):
    """What sizes a causal LM in memory; ``hidden`` and ``intermediate`` size LoRA slots."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters: int = Field(gt=0)
    layers: int = Field(gt=0)
    kv_heads: int = Field(gt=0, description="Key/value heads (fewer than query heads under GQA).")
    head_dim: int = Field(gt=0)
    hidden: int = Field(gt=0)
    intermediate: int = Field(gt=0, description="The MLP's inner width.")
    dtype: str = Field(
        "bfloat16", description="Weights and KV cache: " + ", ".join(CONFIG_DTYPE_BYTES)
    )
    max_context: int | None = Field(None, gt=0, description="The model's max_position_embeddings.")

    @property
    def dtype_bytes(self) -> int:
        if self.dtype not in CONFIG_DTYPE_BYTES:
            known = ", ".join(CONFIG_DTYPE_BYTES)
            raise InvalidRequest(f"Unknown dtype {self.dtype!r}; known: {known}.", field="dtype")
        return CONFIG_DTYPE_BYTES[self.dtype]

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def lora_bytes_per_rank(self) -> int:
        """One rank of a LoRA adapter on every linear layer (q, k, v, o, gate, up, down):
        ``in + out`` weights per projection and rank, in every layer."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        q, k, v, o = h + h, h + kv, h + kv, h + h
        gate, up, down = h + i, h + i, i + h
        return self.layers * (q + k + v + o + gate + up + down) * self.dtype_bytes


class ServingMemory(BaseModel):
    """Bytes one vLLM engine needs, by kind, and what it was sized for."""

    weights: int
    kv_cache: int
    lora: int
    overhead: int
    total: int
    context_length: int
    sequences: int

    def breakdown_gib(self) -> dict[str, float]:
        """The parts in GiB, rounded to 0.1, for the deploy plan and messages."""
        parts = ("weights", "kv_cache", "lora", "overhead", "total")
        return {part: round(getattr(self, part) / GIB, 1) for part in parts}

    def describe(self) -> str:
        gib = self.breakdown_gib()
        return (
            f"{gib['total']} GiB = weights {gib['weights']} + KV cache {gib['kv_cache']} "
            f"({self.sequences} sequences x {self.context_length} tokens) + LoRA "
            f"{gib['lora']} + runtime {gib['overhead']}"
        )


def serving_memory(
    shape: LlmShape,
    *,
    context_length: int,
    sequences: int,
    max_adapters: int = 0,
    max_lora_rank: int = 0,
) -> ServingMemory:
    """The memory estimate (see the module docstring); ``context_length`` is checked against
    the model's own limit."""
    if context_length <= 0 or sequences <= 0:
        raise InvalidRequest(
            "context_length and sequences must be positive.", field="context_length"
        )
    if shape.max_context is not None and context_length > shape.max_context:
        raise InvalidRequest(
            f"context_length {context_length} is beyond the model's {shape.max_context} tokens.",
            field="context_length",
        )
    parts = {
        "weights": shape.parameters * shape.dtype_bytes,
        "kv_cache": shape.kv_bytes_per_token * context_length * sequences,
        "lora": shape.lora_bytes_per_rank * max_lora_rank * max_adapters,
        "overhead": RUNTIME_OVERHEAD,
    }
    return ServingMemory(
        **parts, total=sum(parts.values()), context_length=context_length, sequences=sequences
    )


def usable_bytes(gpu: Gpu, gpu_memory_utilization: float) -> int:
    """What vLLM may take of ``gpu``: its nominal size as GB times the utilization."""
    return math.floor(gpu.memory_gib * GB * gpu_memory_utilization)


def fits(gpu: Gpu, memory: ServingMemory, gpu_memory_utilization: float) -> bool:
    return memory.total <= usable_bytes(gpu, gpu_memory_utilization)


def too_small(gpu: Gpu, memory: ServingMemory, gpu_memory_utilization: float) -> str:
    """Why ``gpu`` cannot serve ``memory``, in GiB, with what to change."""
    usable = usable_bytes(gpu, gpu_memory_utilization) / GIB
    return (
        f"{gpu.platform} GPU {gpu.name} has {usable:.1f} GiB for vLLM "
        f"({gpu.memory_gib:g} GB x gpu_memory_utilization {gpu_memory_utilization:g}); the model "
        f"needs {memory.describe()}. Lower context_length or max_concurrent_sequences, or "
        "pick a larger GPU."
    )


def pick_gpu(platform: str, memory: ServingMemory, gpu_memory_utilization: float) -> Gpu:
    """The cheapest priced GPU of ``platform`` that holds ``memory``; else a 400 naming the
    largest GPU and what the model needs."""
    check_platform(platform)
    gpus = list(CATALOGUE.get(platform, {}).values())
    if not gpus:
        raise InvalidRequest(f"The {platform} platform has no GPUs.", field="gpu")
    fitting = [g for g in gpus if fits(g, memory, gpu_memory_utilization)]
    if not fitting:
        largest = max(gpus, key=lambda g: g.memory_gib)
        raise InvalidRequest(
            f"No {platform} GPU fits this model: {too_small(largest, memory, gpu_memory_utilization)}",
            field="gpu",
        )
    return min(fitting, key=lambda g: (g.usd_per_s, g.memory_gib))


def device_fit_problem(
    shape: LlmShape,
    total_bytes: int,
    gpu_memory_utilization: float,
    *,
    context_length: int,
    max_adapters: int = 0,
    max_lora_rank: int = 0,
) -> str | None:
    """Why the GPU at hand (``total_bytes`` as CUDA reports it) cannot hold one sequence at
    full context, vLLM's own minimum, or None: checked before vLLM spends minutes loading."""
    memory = serving_memory(
        shape,
        context_length=context_length,
        sequences=1,
        max_adapters=max_adapters,
        max_lora_rank=max_lora_rank,
    )
    usable = math.floor(total_bytes * gpu_memory_utilization)
    if memory.total <= usable:
        return None
    return (
        f"This GPU has {usable / GIB:.1f} GiB for vLLM ({total_bytes / GIB:.1f} GiB x "
        f"gpu_memory_utilization {gpu_memory_utilization:g}); the model needs "
        f"{memory.describe()}. Lower FNB_VLLM_MAX_MODEL_LEN or use a larger GPU."
    )


def endpoint_gpus(
    memory: ServingMemory,
    gpu_memory_utilization: float,
    *,
    modal_gpu: str | None,
    runpod_pools: list[str],
) -> dict[str, Any]:
    """What deploy shows for an LLM endpoint: the memory breakdown, the Modal GPU (declared,
    else the cheapest that fits) and the RunPod pools, with the cheapest that would fit."""
    return {
        "memory_gib": memory.breakdown_gib(),
        "sized_for": {"context_length": memory.context_length, "sequences": memory.sequences},
        "gpu_memory_utilization": gpu_memory_utilization,
        "modal_gpu": modal_gpu or pick_gpu("modal", memory, gpu_memory_utilization).name,
        "runpod_gpu_ids": runpod_pools,
        "cheapest_fit": {
            platform: pick_gpu(platform, memory, gpu_memory_utilization).name
            for platform in ("modal", "runpod")
        },
    }


# --- a model folder's shape (config.json and safetensors headers) ---------------------
def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _required(config: dict[str, Any], *keys: str) -> int:
    value = _int(config, *keys)
    if value is None:
        raise InvalidRequest(f"config.json has none of {', '.join(keys)}.", field="model")
    return value


def _weights(folder: Path) -> tuple[int, str | None]:
    """Parameters in the safetensors headers, and the dtype most of them have."""
    by_dtype: dict[str, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        for info in read_safetensors_header(file).values():
            dtype = str(info.get("dtype"))
            if dtype in DTYPE_BYTES:  # integer buffers are not weights
                by_dtype[dtype] = by_dtype.get(dtype, 0) + math.prod(int(d) for d in info["shape"])
    if not by_dtype:
        return 0, None
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    top = max(by_dtype, key=lambda d: by_dtype[d])
    return sum(by_dtype.values()), names.get(top, "float8")


def shape_from_config(config: dict[str, Any], parameters: int, dtype: str | None) -> LlmShape:
    """The shape of a model from its ``config.json`` (a Hub causal LM's keys) and its
    parameter count; nested ``text_config`` (multimodal wrappers) is read when present."""
    text = config.get("text_config")
    if isinstance(text, dict):
        config = {**config, **text}
    hidden = _required(config, "hidden_size", "n_embd", "d_model")
    heads = _required(config, "num_attention_heads", "n_head")
    kv_heads = _int(config, "num_key_value_heads", "num_kv_heads") or heads
    config_dtype = config.get("torch_dtype") or config.get("dtype")
    return LlmShape(
        parameters=parameters,
        layers=_required(config, "num_hidden_layers", "n_layer"),
        kv_heads=kv_heads,
        head_dim=_int(config, "head_dim") or hidden // heads,
        hidden=hidden,
        intermediate=_int(config, "intermediate_size", "n_inner") or 4 * hidden,
        dtype=dtype or (config_dtype if config_dtype in CONFIG_DTYPE_BYTES else "bfloat16"),
        max_context=_int(config, "max_position_embeddings", "n_positions", "max_seq_len"),
    )


def shape_from_folder(folder: Path, manifest: dict[str, Any] | None = None) -> LlmShape:
    """The shape of the base model in ``folder`` (a store artifact or a Hub-style folder):
    parameters from the safetensors headers, else the manifest's ``parameters``."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"{folder.name} has no config.json.", field="model") from None
    except ValueError as exc:
        raise InvalidRequest(
            f"{folder.name}/config.json is not JSON: {exc}", field="model"
        ) from None
    if not isinstance(config, dict):
        raise InvalidRequest(f"{folder.name}/config.json is not a JSON object.", field="model")
    parameters, dtype = _weights(folder)
    if not parameters and manifest and isinstance(manifest.get("parameters"), int):
        parameters = int(manifest["parameters"])
    if not parameters:
        raise InvalidRequest(f"{folder.name} has no safetensors weights.", field="model")
    return shape_from_config(config, parameters, dtype)
