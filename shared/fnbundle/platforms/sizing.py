"""What fine-tuning a base model needs in memory, sized without loading it.

* The model's shape (parameters, trainable parameters, layers, heads, vocabulary, dtype)
  from ``config.json`` and the JSON header of each safetensors file.
* A memory estimate: weights, gradients of the trainable weights, AdamW state,
  activations and a fixed runtime overhead.

Key rules: nothing here imports torch or reads a weight (only the JSON header of each
safetensors file, and for ``hf:`` bases only the headers, fetched without the weights), so
sizing takes milliseconds. An ``hf:`` base is sized from the local Hub cache when it is
there; otherwise the Hub is asked with a hard deadline (:data:`HUB_DEADLINE_S`, at most
:data:`HUB_LOOKUPS` lookups at once), and a Hub that is offline, unreachable or slow raises
:class:`BaseNotChecked` so the caller can answer at once and leave the check to the worker.
A Hub that answers "no such repository or revision" is a 404 / 400 at once.
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from fnbundle.errors import FnbError, InvalidRequest, UnsafeArtifact, UpstreamUnavailable
from fnbundle.loading import hf_repo_root, hub_error, parse_model_ref, resolve_model_dir
from fnbundle.platforms.catalogue import GIB
from fnbundle.settings import Settings

CONTEXT_OVERHEAD = (
    1 * GIB
)  # bytes: CUDA context, kernels and allocator slack (torch runtime on CPU)
ADAMW_BYTES = 8  # per trainable parameter: two fp32 moments
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 * 1024 * 1024  # bytes: the safetensors format's own limit
EMBEDDING_NAMES = ("word_embeddings", "embed_tokens", "wte", "shared")


class ModelShape(BaseModel):
    n_params: int
    n_trainable: int
    hidden: int
    layers: int
    heads: int
    vocab: int
    dtype_bytes: int = 4


class MemoryEstimate(BaseModel):
    """Bytes needed to fine-tune, by kind."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    total: int


def estimate_memory(shape: ModelShape, batch_size: int, seq_len: int) -> MemoryEstimate:
    """Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models"): ``s*b*h*(34 + 5*a*s/h)`` bytes per layer for 16-bit activations,
    scaled here by ``dtype_bytes / 2``."""
    s, b, h, a = seq_len, batch_size, shape.hidden, shape.heads
    per_layer = s * b * h * (34 + 5 * a * s / h) * shape.dtype_bytes / 2
    parts = {
        "weights": shape.n_params * shape.dtype_bytes,
        "gradients": shape.n_trainable * shape.dtype_bytes,
        "optimizer": shape.n_trainable * ADAMW_BYTES,
        "activations": math.ceil(shape.layers * per_layer),
        "overhead": CONTEXT_OVERHEAD,
    }
    return MemoryEstimate(**parts, total=sum(parts.values()))


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> {"dtype", "shape", ...} from the JSON header: 8 bytes little-endian
    length, then that many bytes of JSON. The weights after it are never read."""
    bad = f"{path.name} is not a safetensors file"
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InvalidRequest(f"{bad}: shorter than 8 bytes.", field="base")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER:
            raise InvalidRequest(f"{bad}: header length {length} is too large.", field="base")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{bad}: header is not JSON ({exc}).", field="base") from None
    if not isinstance(header, dict):
        raise InvalidRequest(f"{bad}: header is not a JSON object.", field="base")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, info in tensors.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list)):
            raise InvalidRequest(f"{bad}: tensor {name!r} has no shape.", field="base")
    return tensors


def _config_int(config: dict[str, Any], *keys: str) -> int:
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    raise InvalidRequest(f"config.json has none of {', '.join(keys)}.", field="base")


def _shape(
    config: dict[str, Any], tensors: dict[str, dict[str, Any]], freeze_embeddings: bool
) -> ModelShape:
    vocab = _config_int(config, "vocab_size")
    by_dtype: dict[str, int] = {}
    frozen = 0
    for name, info in tensors.items():
        dtype = str(info.get("dtype"))
        if dtype not in DTYPE_BYTES:  # integer buffers such as position_ids are not weights
            continue
        count = math.prod(int(d) for d in info["shape"])
        by_dtype[dtype] = by_dtype.get(dtype, 0) + count
        dims = info["shape"]
        is_word_embedding = len(dims) == 2 and dims[0] == vocab
        if freeze_embeddings and is_word_embedding and any(k in name for k in EMBEDDING_NAMES):
            frozen = count
    if not by_dtype:
        raise InvalidRequest("The base model's safetensors files hold no weights.", field="base")
    n_params = sum(by_dtype.values())
    return ModelShape(
        n_params=n_params,
        n_trainable=n_params - frozen,
        hidden=_config_int(config, "hidden_size", "d_model", "n_embd", "dim"),
        layers=_config_int(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        heads=_config_int(config, "num_attention_heads", "n_head", "num_heads", "n_heads"),
        vocab=vocab,
        dtype_bytes=DTYPE_BYTES[max(by_dtype, key=lambda d: by_dtype[d])],
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"{path.parent} has no config.json.", field="base") from None
    except ValueError as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}", field="base") from None
    if not isinstance(config, dict):
        raise InvalidRequest(f"{path} is not a JSON object.", field="base")
    if "auto_map" in config:
        raise UnsafeArtifact("The base model needs custom code (auto_map); it is refused.")
    return config


def model_shape(base_dir: Path, *, freeze_embeddings: bool = True) -> ModelShape:
    """The shape of the model in ``base_dir``; ``freeze_embeddings`` as in training."""
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise InvalidRequest(f"{base_dir} has no .safetensors weights.", field="base")
    tensors: dict[str, dict[str, Any]] = {}
    for file in files:  # shards: model-00001-of-00002.safetensors, ...
        tensors.update(read_safetensors_header(file))
    return _shape(_read_config(base_dir / "config.json"), tensors, freeze_embeddings)


HUB_DEADLINE_S = 3.0  # seconds a submit waits for the Hub before leaving the check to the worker
HUB_LOOKUPS = 4  # Hub lookups in flight at once (each holds a thread); more are not started
_hub_slots = threading.BoundedSemaphore(HUB_LOOKUPS)
SHARD_RE = re.compile(r"^[\w.-]+\.safetensors$")  # a shard named by an index: no folders

T = TypeVar("T")


class BaseNotChecked(Exception):
    """The base could not be checked now (the Hub is offline, unreachable or slow)."""


def _with_deadline(call: Callable[[], T], deadline_s: float) -> T:
    """``call()`` in a daemon thread, waited for at most ``deadline_s``: a Hub client's
    own timeouts and retries can add up to most of a minute."""
    if not _hub_slots.acquire(blocking=False):
        raise BaseNotChecked(f"{HUB_LOOKUPS} Hub lookups are already in flight")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            _hub_slots.release()

    thread = threading.Thread(target=run, name="fnbundle-hub-lookup", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        raise BaseNotChecked(f"the Hub did not answer within {deadline_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["value"])


def _hub_cached(
    repo: str, revision: str | None, settings: Settings, freeze: bool
) -> tuple[ModelShape, Path | None] | None:
    """Shape and tokenizer of a Hub base from the local Hub cache alone, or None."""
    from huggingface_hub import try_to_load_from_cache

    cache = str(settings.hf_cache) if settings.hf_cache else None

    def cached(filename: str) -> Path | None:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if not isinstance(found, str):
            return None
        path = Path(found)
        root = hf_repo_root(path.parent)
        return path if path.resolve().is_relative_to(root) else None

    config = cached("config.json")
    if config is None:
        return None
    index = cached("model.safetensors.index.json")
    files = ["model.safetensors"]
    if index is not None:
        try:
            files = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    if not files or not all(isinstance(f, str) and SHARD_RE.fullmatch(f) for f in files):
        return None
    paths = [cached(f) for f in files]
    if any(p is None for p in paths):
        return None
    tensors: dict[str, dict[str, Any]] = {}
    for path in paths:
        tensors.update(read_safetensors_header(cast(Path, path)))
    return _shape(_read_config(config), tensors, freeze), cached("tokenizer.json")


def _hub_remote(repo: str, revision: str | None, settings: Settings, freeze: bool) -> ModelShape:
    """Shape of a Hub base from its config.json and its safetensors headers (no weights)."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    cache = str(settings.hf_cache) if settings.hf_cache else None
    config = hf_hub_download(repo, "config.json", revision=revision, cache_dir=cache)
    meta = get_safetensors_metadata(repo, revision=revision)
    tensors = {
        name: {"dtype": info.dtype, "shape": list(info.shape)}
        for file in meta.files_metadata.values()
        for name, info in file.tensors.items()
    }
    return _shape(_read_config(Path(config)), tensors, freeze)


def base_shape(ref: str, settings: Settings, freeze: bool) -> tuple[ModelShape, Path | None]:
    """Shape and tokenizer file of a base; a Hub base is read from the local cache, else
    from its headers alone within :data:`HUB_DEADLINE_S` (else :class:`BaseNotChecked`)."""
    parsed = parse_model_ref(ref, field="base")
    if parsed.kind != "hf":
        folder = resolve_model_dir(ref, settings, field="base")
        tokenizer = folder / "tokenizer.json"
        return model_shape(folder, freeze_embeddings=freeze), (
            tokenizer if tokenizer.is_file() else None
        )
    repo, revision = parsed.name, parsed.revision
    cached = _hub_cached(repo, revision, settings, freeze)
    if cached is not None:
        return cached
    try:
        shape = _with_deadline(
            lambda: _hub_remote(repo, revision, settings, freeze), HUB_DEADLINE_S
        )
    except (BaseNotChecked, FnbError):
        raise
    except Exception as exc:
        error = hub_error(exc, repo, revision, field="base")
        if isinstance(error, UpstreamUnavailable):
            raise BaseNotChecked(error.message) from None
        raise error from None
    return shape, None
