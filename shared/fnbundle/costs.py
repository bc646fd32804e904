"""What a training job will cost before it starts, and a guard against overspending while it runs.

* A GPU catalogue for Modal and RunPod serverless (memory, USD per second, the pricing page
  and the month the price was read) plus Modal's CPU rates, which also price the ``local``
  platform so a budget behaves the same on a laptop as in the cloud.
* A memory estimate for fine-tuning a transformer: weights, gradients of the trainable
  weights, AdamW state, activations and a fixed runtime overhead, from ``config.json`` and
  the safetensors headers.
* A time estimate: the job's FLOPs divided by the device's throughput. Throughput starts as
  a documented guess per device and is replaced by what real runs measured, kept in
  ``<store>/.calibration.json`` as FLOP/s, so a run of one model calibrates every model.
* :class:`BudgetTracker`: announces 50, 75, 90 and 100 % of a budget once each, resumes included.

Key rules: nothing here imports torch or reads a weight (only the JSON header of each
safetensors file, and for ``hf:`` bases only the headers, fetched without the weights), so
an estimate takes milliseconds. An ``hf:`` base is sized from the local Hub cache when it is
there; otherwise the Hub is asked with a hard deadline (:data:`HUB_DEADLINE_S`, at most
:data:`HUB_LOOKUPS` lookups at once), and a Hub that is offline, unreachable or slow gives
an estimate marked ``approximate`` (price per second only) instead of holding the request:
the worker checks the base when the job starts. A Hub that answers "no such repository or
revision" is a 404 / 400 at once. Estimates err high: every epoch runs, a RunPod pool is timed
with its slowest GPU, a local core is priced as a physical Modal core. Every price carries
its source and date.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from fnbundle.errors import FnbError, InvalidRequest, UnsafeArtifact, UpstreamUnavailable
from fnbundle.loading import hf_repo_root, hub_error, parse_model_ref, resolve_model_dir
from fnbundle.settings import Settings
from fnbundle.training.data import load_text_dataset, make_splits
from fnbundle.training.text_classifier import LENGTH_WINDOW, TrainClassifierParams

log = logging.getLogger(__name__)

Platform = Literal["local", "modal", "runpod"]
PLATFORMS: tuple[Platform, ...] = ("local", "modal", "runpod")

GIB = 1024**3  # bytes

# --- catalogue ------------------------------------------------------------------------
CATALOGUE_AS_OF = "2026-11"
MODAL_PRICING = "https://modal.com/pricing"
RUNPOD_PRICING = "https://docs.runpod.io/serverless/pricing"  # flex workers
CONFIRMED = "read from the pricing page"
QUOTED = "the pricing page's figure, as quoted by 2026 price comparisons"
UNCONFIRMED = "best known public figure; not confirmed against the pricing page"

MODAL_CPU_USD_PER_CORE_S = 0.0000131  # per physical core (2 vCPUs) and second (quoted)
MODAL_MEMORY_USD_PER_GIB_S = 0.00000222  # per GiB and second (best known figure, unconfirmed)


class Gpu(BaseModel):
    """One GPU type (Modal) or GPU pool (RunPod) and what a second of it costs."""

    model_config = ConfigDict(frozen=True)

    platform: Platform
    name: str  # as the platform's API spells it: Modal gpu type, RunPod gpu_ids pool
    memory_gib: float  # nominal size; ``recommend_gpu``'s headroom covers what CUDA keeps
    usd_per_s: float
    fp32_tflops: float  # dense fp32 peak (NVIDIA data sheet); weakest GPU of a RunPod pool
    source: str
    as_of: str = CATALOGUE_AS_OF
    note: str = CONFIRMED


def _gpu(
    platform: Platform, name: str, gib: float, usd_per_s: float, tflops: float, note: str
) -> Gpu:
    source = MODAL_PRICING if platform == "modal" else RUNPOD_PRICING
    return Gpu(
        platform=platform,
        name=name,
        memory_gib=gib,
        usd_per_s=round(usd_per_s, 7),
        fp32_tflops=tflops,
        source=source,
        note=note,
    )


HOURS = 3600  # seconds: Modal quotes prices per hour as well

# Names match fnbundle.endpoints (MODAL_GPUS, RUNPOD_GPU_POOLS), which validates deployments.
CATALOGUE: dict[str, dict[str, Gpu]] = {
    "modal": {
        g.name: g
        for g in (
            _gpu("modal", "T4", 16, 0.59 / HOURS, 8.1, QUOTED),
            _gpu("modal", "L4", 24, 0.80 / HOURS, 30.3, QUOTED),
            _gpu("modal", "A10G", 24, 1.10 / HOURS, 31.2, UNCONFIRMED),
            _gpu("modal", "L40S", 48, 1.95 / HOURS, 91.6, QUOTED),
            _gpu("modal", "A100-40GB", 40, 2.10 / HOURS, 19.5, UNCONFIRMED),
            _gpu("modal", "A100-80GB", 80, 2.50 / HOURS, 19.5, QUOTED),
            _gpu("modal", "H100", 80, 3.95 / HOURS, 67.0, QUOTED),
            _gpu("modal", "H200", 141, 4.54 / HOURS, 67.0, UNCONFIRMED),
            _gpu("modal", "B200", 180, 6.25 / HOURS, 75.0, QUOTED),
        )
    },
    "runpod": {
        g.name: g
        for g in (
            _gpu("runpod", "AMPERE_16", 16, 0.00016, 19.2, f"A4000, A4500, RTX 4000; {CONFIRMED}"),
            _gpu("runpod", "AMPERE_24", 24, 0.00019, 27.8, f"L4, A5000, 3090; {CONFIRMED}"),
            _gpu("runpod", "ADA_24", 24, 0.00031, 82.6, f"4090 PRO; {CONFIRMED}"),
            _gpu("runpod", "ADA_32_PRO", 32, 0.00044, 104.8, f"5090 PRO; {UNCONFIRMED}"),
            _gpu("runpod", "AMPERE_48", 48, 0.00034, 37.4, f"A6000, A40; {CONFIRMED}"),
            _gpu(
                "runpod", "ADA_48_PRO", 48, 0.00053, 90.5, f"L40, L40S, 6000 Ada PRO; {CONFIRMED}"
            ),
            _gpu("runpod", "AMPERE_80", 80, 0.00076, 19.5, f"A100; {CONFIRMED}"),
            _gpu("runpod", "ADA_80_PRO", 80, 0.00116, 51.0, f"H100 PRO; {CONFIRMED}"),
            _gpu("runpod", "HOPPER_141", 141, 0.00155, 67.0, f"H200 PRO; {CONFIRMED}"),
        )
    },
}


def _check_platform(platform: str) -> None:
    if platform not in PLATFORMS:
        raise InvalidRequest(
            f"Unknown platform {platform!r}; known: {', '.join(PLATFORMS)}.", field="platform"
        )


def get_gpu(platform: str, name: str) -> Gpu:
    """The catalogue entry for ``name`` (case-insensitive, as Modal matches it)."""
    _check_platform(platform)
    gpus = CATALOGUE.get(platform, {})
    for gpu in gpus.values():
        if gpu.name.upper() == name.strip().upper():
            return gpu
    known = ", ".join(gpus) or "none: it runs on CPU"
    raise InvalidRequest(f"Unknown {platform} GPU {name!r}; known: {known}.", field="gpu")


def recommend_gpu(platform: str, memory_bytes: float, headroom: float = 1.2) -> Gpu:
    """The cheapest GPU of ``platform`` with ``memory_bytes * headroom`` of memory."""
    _check_platform(platform)
    needed = memory_bytes * headroom
    fitting = [g for g in CATALOGUE.get(platform, {}).values() if g.memory_gib * GIB >= needed]
    if not fitting:
        raise InvalidRequest(
            f"No {platform} GPU has {needed / GIB:.1f} GiB ({memory_bytes / GIB:.1f} GiB "
            f"x {headroom} headroom); lower batch_size or max_length.",
            field="gpu",
        )
    return min(fitting, key=lambda g: (g.usd_per_s, g.memory_gib))


def cpu_usd_per_s(cores: int, memory_gib: float = 0.0) -> float:
    """A CPU machine at Modal's rates: ``cores`` physical cores and ``memory_gib`` of memory."""
    return cores * MODAL_CPU_USD_PER_CORE_S + memory_gib * MODAL_MEMORY_USD_PER_GIB_S


def local_cores(settings: Settings) -> int:
    """The cores a local training run uses (the trainer's own rule)."""
    if settings.threads:
        return settings.threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- memory ----------------------------------------------------------------------------
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


def _base_shape(ref: str, settings: Settings, freeze: bool) -> tuple[ModelShape, Path | None]:
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


# --- time ------------------------------------------------------------------------------
EFFICIENCY = 0.35  # share of the fp32 peak a small-batch fine-tune reaches on a GPU (guess)
# Effective fp32 GFLOP/s per core with AVX2 + FMA: the demo fine-tune (MiniLM on
# data/reviews.csv, length-grouped batches) reached 25 on a quiet 2-core AMD EPYC and 4 to 12
# while sharing it; the peak is ~100. A little below the quiet figure: budgets err high.
CPU_GFLOPS_PER_CORE = 20.0
EMA_WEIGHT = 0.3  # weight of the newest run in the measured throughput
CALIBRATION_FILE = ".calibration.json"
CHARS_PER_TOKEN = 4.0  # when the base has no tokenizer.json
TOKENIZED_SAMPLE = 2000  # texts tokenized exactly; a larger dataset uses their ratio
JOB_OVERHEAD_S = 45  # seconds: load the base, export ONNX with parity checks, publish
COLD_START_S = 30  # seconds: a serverless container starting (billed on Modal and RunPod)


def flops_per_token(shape: ModelShape, seq_len: float, *, train: bool) -> float:
    """Kaplan et al. 2020: a forward pass costs 2 FLOPs per dense weight plus
    ``2 * layers * seq_len * hidden`` for attention; backward twice the forward.
    The word-embedding lookup (vocab x hidden weights) does no multiplications."""
    dense = max(shape.n_params - shape.vocab * shape.hidden, 0)
    forward = 2 * dense + 2 * shape.layers * seq_len * shape.hidden
    return 3 * forward if train else forward


def default_flops_per_s(device: str, cpu_cores: int = 1) -> float:
    """The guess used until a run on ``device`` ("cpu" or a catalogue GPU) is measured."""
    if device == "cpu":
        return cpu_cores * CPU_GFLOPS_PER_CORE * 1e9
    for gpus in CATALOGUE.values():
        if device in gpus:
            return gpus[device].fp32_tflops * EFFICIENCY * 1e12
    raise InvalidRequest(f"Unknown device {device!r}.", field="gpu")


class Calibration:
    """Measured throughput per device, as effective FLOP/s, in a JSON file.

    The runtime calls ``record(estimate.gpu, tokens, seconds, estimate.flops_per_token)``
    after the training and evaluation passes (start-up and export not included). Writes are
    atomic (temp file + ``os.replace``); an unreadable file counts as empty.
    """

    def __init__(self, path: Path, *, cpu_cores: int = 1):
        self.path = path
        self.cpu_cores = cpu_cores

    @classmethod
    def for_settings(cls, settings: Settings) -> Calibration:
        return cls(settings.store_root / CALIBRATION_FILE, cpu_cores=local_cores(settings))

    def _load(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            devices = data["devices"]
            return {k: v for k, v in devices.items() if float(v["flops_per_s"]) > 0}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring unreadable calibration file %s: %s", self.path, exc)
            return {}

    def measured_runs(self, device: str) -> int:
        return int(self._load().get(device, {}).get("runs", 0))

    def flops_per_s(self, device: str) -> float:
        measured = self._load().get(device)
        if measured:
            return float(measured["flops_per_s"])
        return default_flops_per_s(device, self.cpu_cores)

    def throughput(self, device: str, flops_per_token: float) -> float:
        """Tokens per second on ``device`` for a model needing ``flops_per_token``."""
        return self.flops_per_s(device) / flops_per_token

    def record(self, device: str, tokens: int, seconds: float, flops_per_token: float) -> None:
        """Fold one run into the moving average; a run that did no work is ignored."""
        if tokens <= 0 or seconds <= 0 or flops_per_token <= 0:
            return
        devices = self._load()
        rate = tokens * flops_per_token / seconds
        old = devices.get(device)
        if old:
            rate = EMA_WEIGHT * rate + (1 - EMA_WEIGHT) * float(old["flops_per_s"])
        runs = int(old["runs"]) + 1 if old else 1
        devices[device] = {"flops_per_s": rate, "runs": runs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".calibration.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "devices": devices}, f, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _padded_tokens(lengths: list[int], batch_size: int, seed: int | None) -> int:
    """Tokens the model processes when every batch is padded to its longest text, batched
    as the trainer does: with a seed (training), shuffled, then sorted by length within
    windows of ``LENGTH_WINDOW`` batches; without one (evaluation), in order."""
    order = list(lengths)
    if seed is not None:
        random.Random(seed).shuffle(order)
        window = batch_size * LENGTH_WINDOW
        order = [n for w in range(0, len(order), window) for n in sorted(order[w : w + window])]
    return sum(
        max(order[i : i + batch_size]) * len(order[i : i + batch_size])
        for i in range(0, len(order), batch_size)
    )


def _token_lengths(
    texts: list[str], tokenizer_file: Path | None, max_length: int
) -> tuple[list[int], str]:
    """Tokens per text ([CLS]/[SEP] included, truncated), and how they were counted."""
    if tokenizer_file is None:
        ratio, how = 1 / CHARS_PER_TOKEN, f"{CHARS_PER_TOKEN:g} characters per token"
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.no_truncation()
        tok.no_padding()
        step = max(1, len(texts) // TOKENIZED_SAMPLE)
        sample = texts[::step]
        counts = [len(e.ids) for e in tok.encode_batch(sample)]
        if step == 1:
            return [min(n, max_length) for n in counts], "counted with the base's tokenizer"
        ratio = sum(counts) / max(1, sum(len(t) for t in sample))
        how = f"tokenizer ratio from {len(sample)} sampled texts"
    return [min(max_length, max(1, round(len(t) * ratio))) for t in texts], how


class Estimate(BaseModel):
    """What a job will need and cost. An ``approximate`` estimate (the base could not be
    checked yet) has only the price per second; the sizes and totals are None."""

    task: str
    platform: Platform
    gpu: str  # catalogue name, or "cpu"; also the calibration key
    usd_per_s: float
    memory: MemoryEstimate | None
    examples: int
    steps: int | None
    tokens: int | None  # processed, training and evaluation passes together
    flops_per_token: float | None  # mean over ``tokens``; what Calibration.record needs
    seconds: float | None
    usd: float | None
    assumptions: list[str]
    approximate: bool = False
    catalogue_as_of: str = CATALOGUE_AS_OF


def _approximate(
    task: str,
    platform: str,
    base: str,
    examples: int,
    settings: Settings,
    gpu: str | None,
    reason: str,
) -> Estimate:
    """The price per second alone, for a base that cannot be checked now. Without a named
    GPU a cloud job is priced at the platform's dearest one: estimates err high."""
    checked = f"{base} was not checked at submit ({reason}); the worker checks it when it starts"
    if platform == "local":
        cores = local_cores(settings)
        device, usd_per_s = "cpu", cpu_usd_per_s(cores)
        priced = f"priced as {cores} Modal CPU cores; memory not included (its size is unknown)"
    else:
        chosen = (
            get_gpu(platform, gpu)
            if gpu is not None
            else max(CATALOGUE[platform].values(), key=lambda g: g.usd_per_s)
        )
        device, usd_per_s = chosen.name, chosen.usd_per_s
        priced = f"priced at {chosen.name} ({chosen.note})" + (
            "" if gpu else ", the dearest GPU, until the base's size is known"
        )
    return Estimate(
        task=task,
        platform=cast(Platform, platform),
        gpu=device,
        usd_per_s=usd_per_s,
        memory=None,
        examples=examples,
        steps=None,
        tokens=None,
        flops_per_token=None,
        seconds=None,
        usd=None,
        assumptions=[checked, priced],
        approximate=True,
    )


def estimate_job(
    task: str,
    params: dict[str, Any],
    settings: Settings,
    *,
    platform: str = "local",
    gpu: str | None = None,
) -> Estimate:
    """Memory, time and USD of a job before it runs. "local" is priced as a Modal CPU
    container; "modal" and "runpod" use ``gpu`` or the cheapest GPU the job fits on."""
    if task != "train_classifier":
        raise InvalidRequest(
            f"No cost estimate for task {task!r}; known: train_classifier.", field="task"
        )
    _check_platform(platform)
    p = TrainClassifierParams.model_validate(params)
    ds = load_text_dataset(
        p.data, settings.data_roots, text_column=p.text_column, label_column=p.label_column
    )
    splits = make_splits(ds, p.eval_split, p.seed)
    try:
        shape, tokenizer_file = _base_shape(p.base, settings, p.freeze_embeddings)
    except BaseNotChecked as exc:
        return _approximate(task, platform, p.base, len(ds.texts), settings, gpu, str(exc))
    lengths, counted = _token_lengths(ds.texts, tokenizer_file, p.max_length)

    def tokens_of(rows: list[int], seed: int | None) -> int:
        return _padded_tokens([lengths[i] for i in rows], p.batch_size, seed)

    train_tokens = p.epochs * tokens_of(splits.train, p.seed)
    eval_tokens = p.epochs * tokens_of(splits.validation, None) + tokens_of(splits.test, None)
    mean_len = train_tokens / (p.epochs * len(splits.train))
    memory = estimate_memory(shape, p.batch_size, max(lengths))
    flops = train_tokens * flops_per_token(shape, mean_len, train=True)
    flops += eval_tokens * flops_per_token(shape, mean_len, train=False)

    assumptions = [
        f"all {p.epochs} epochs run (early stopping can only end sooner)",
        f"{mean_len:.0f} tokens per example after per-batch padding ({counted})",
        "training 6 FLOPs and evaluation 2 FLOPs per dense weight and token",
    ]
    overhead = JOB_OVERHEAD_S
    if platform == "local":
        device, cores = "cpu", local_cores(settings)
        memory_gib = math.ceil(memory.total / GIB)
        usd_per_s = cpu_usd_per_s(cores, memory_gib)
        assumptions.append(
            f"priced as {cores} Modal CPU cores and {memory_gib} GiB at Modal's rates"
        )
    else:
        chosen = recommend_gpu(platform, memory.total) if gpu is None else get_gpu(platform, gpu)
        if chosen.memory_gib * GIB < memory.total:
            raise InvalidRequest(
                f"{chosen.name} has {chosen.memory_gib:g} GiB; this job needs "
                f"{memory.total / GIB:.1f} GiB. Lower batch_size or max_length.",
                field="gpu",
            )
        device, usd_per_s, overhead = chosen.name, chosen.usd_per_s, overhead + COLD_START_S
        assumptions.append(f"{chosen.name} ({chosen.note}) at the GPU price only")
    calibration = Calibration.for_settings(settings)
    runs = calibration.measured_runs(device)
    rate = calibration.flops_per_s(device)
    assumptions.append(
        f"{device} at {rate / 1e12:.3g} TFLOP/s "
        + (f"(measured over {runs} run(s))" if runs else "(default guess, not yet measured)")
    )
    assumptions.append(f"{overhead} s to start, load the base, export and publish")
    seconds = flops / rate + overhead
    tokens = train_tokens + eval_tokens
    return Estimate(
        task=task,
        platform=cast(Platform, platform),  # checked by _check_platform
        gpu=device,
        usd_per_s=usd_per_s,
        memory=memory,
        examples=len(ds.texts),
        steps=p.epochs * math.ceil(len(splits.train) / p.batch_size),
        tokens=tokens,
        flops_per_token=flops / tokens,
        seconds=seconds,
        usd=round(seconds * usd_per_s, 6),
        assumptions=assumptions,
    )


# --- budget ----------------------------------------------------------------------------
BUDGET_THRESHOLDS = (0.5, 0.75, 0.9, 1.0)  # fractions of the budget announced once each


class BudgetTracker:
    """Cost of a running job against its budget.

    ``update(elapsed_s)`` takes the seconds this run has been going and returns one
    ``cost_usd`` event per threshold newly crossed. After a resume, pass what the earlier
    attempts spent as ``already_spent_usd``: thresholds it had crossed stay quiet.
    """

    def __init__(
        self, budget_usd: float | None, usd_per_s: float, *, already_spent_usd: float = 0.0
    ):
        if budget_usd is not None and budget_usd <= 0:
            raise InvalidRequest("budget_usd must be positive.", field="budget_usd")
        self.budget_usd = budget_usd
        self.usd_per_s = max(usd_per_s, 0.0)
        self._spent_before = max(already_spent_usd, 0.0)
        self._elapsed_s = 0.0
        self._announced = {t for t in BUDGET_THRESHOLDS if self._fraction() >= t}

    def _fraction(self) -> float:
        return self.cost_usd / self.budget_usd if self.budget_usd else 0.0

    @property
    def cost_usd(self) -> float:
        return self._spent_before + self._elapsed_s * self.usd_per_s

    @property
    def exhausted(self) -> bool:
        return self.budget_usd is not None and self.cost_usd >= self.budget_usd

    def update(self, elapsed_s: float) -> list[dict[str, Any]]:
        self._elapsed_s = max(self._elapsed_s, elapsed_s)  # a clock never runs back
        events = []
        for threshold in BUDGET_THRESHOLDS:
            if threshold not in self._announced and self._fraction() >= threshold:
                self._announced.add(threshold)
                events.append(
                    {
                        "type": "cost_usd",
                        "cost_usd": round(self.cost_usd, 6),
                        "budget_usd": self.budget_usd,
                        "fraction": threshold,
                    }
                )
        return events
