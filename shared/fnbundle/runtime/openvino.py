"""OpenVINO on the CPU in bf16: the runner, the CPU check, and the load-time parity gate.

OpenVINO runs an artifact's fp32 graph (``model.onnx``; it cannot read the fused int8
graph's ``QAttention``) with bf16 matrix products. On a Xeon with AMX that measured 1.6x
the served ONNX Runtime int8 session at batches of 32 (docs/BENCHMARKS.md, "Levers", 5); on
a CPU without AMX OpenVINO falls back to f32, which loses to ONNX Runtime int8 by a third to
a half. So ``auto`` takes OpenVINO only where it wins, and only after checking it:

* the artifact's parity-checked default is an ONNX export and ``model.onnx`` is listed;
* ``openvino`` is installed and this CPU has AMX with bf16 (:func:`fast_bf16_cpu`);
* ``FNB_OPENVINO`` is ``auto`` (``off``: never);
* the OpenVINO model passes the int8 parity rule of its task against ONNX Runtime fp32 on
  the same graph (:data:`REFERENCE`) on :data:`PROBE_TEXTS` (:func:`gated_load`).

Even then a small pass runs on the ONNX Runtime default (:func:`by_size`): OpenVINO's fixed
cost per run (about 3 ms on 2 threads) makes one short text 1.6x slower than ONNX Runtime
int8, while batches of 128-token texts run 1.2-1.4x faster through the gateway (2.6x the
embedder's fp32 default); the two cross near :func:`min_tokens` padded tokens (512 against
int8, 32 against fp32), except that a pass of a few long texts (rows of
:func:`min_row_tokens`, 64 against int8) is all compute and goes to OpenVINO. Both sessions
stay loaded, and the model's ``backend`` says ``openvino-bf16``.

Key rules: ``openvino`` is imported when a model is compiled, never at import, and never
with ``FNB_OPENVINO=off`` (the choice reads ``find_spec`` and ``/proc/cpuinfo`` only); any
OpenVINO failure while compiling, warming up or checking serves the ONNX Runtime default
with a warning naming the reason, it never fails the load; the model's ``backend`` names
what serves (``openvino-bf16`` only once the gate passed).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from fnbundle.errors import InvalidRequest
from fnbundle.runtime.onnx import RunFn
from fnbundle.settings import Settings
from fnbundle.store import Artifact

log = logging.getLogger(__name__)

BACKEND = "openvino-bf16"
FILE = "model.onnx"  # the fp32 graph: OpenVINO has no conversion for the fused int8 ops
GATED = "auto"  # the backend key of a model whose backend is chosen at load by the gate
# What the gate holds OpenVINO to: ONNX Runtime fp32 on the graph OpenVINO reads, the export's
# own parity reference. Not the int8 default: int8 is itself an approximation, and on four
# freshly trained demo models OpenVINO bf16 was within 0.002 (mean probability) of fp32 while
# int8 was 0.007-0.056 away, so a gate against int8 turned two of the four away for int8's
# error, not OpenVINO's.
REFERENCE = "onnx-fp32"
CPUINFO = Path("/proc/cpuinfo")
# Padded tokens (batch x longest) from which a pass of an auto-chosen OpenVINO model runs on
# OpenVINO, by the ONNX Runtime default it replaces (2 threads, this AMX Xeon). Against int8,
# in process, one short text took 5.8 ms in OpenVINO bf16 and 3.4 ms in ONNX Runtime, 16 short
# reviews (384 tokens) 30.6 against 36.0 ms, 32 128-token texts 275 against 414 ms; but
# through the gateway a bound of 256 put the batches of short reviews at 32 clients on
# OpenVINO and lost (0.84x the 512 bound's throughput against the same LitServe), so 512.
# Against fp32 OpenVINO leads from 32 tokens (6.4 against 8.4 ms; 128 tokens: 12.4 against
# 28.8 ms) and the gateway's embeddings gained at every load.
MIN_TOKENS = {"onnx-int8": 512, "onnx-fp32": 32}
# Rows (padded to the pass's longest text) from which a pass of a few long texts runs on
# OpenVINO however small its total: the 512 bound above is about many short texts, where
# OpenVINO's fixed cost per run weighs; one long text is all compute. In process, 2 threads,
# against int8: 1x64 5.3 / 5.7 ms (OpenVINO / ONNX Runtime), 1x128 5.7 / 10.1, 2x128
# 10.7 / 18.6, but 1x24 3.3 / 2.9. A batch of 8 or more such rows is past 512 anyway.
MIN_ROW_TOKENS = {"onnx-int8": 64, "onnx-fp32": 32}


def min_tokens(onnx_backend: str) -> int:
    """The padded tokens from which OpenVINO runs a pass instead of ``onnx_backend``."""
    return MIN_TOKENS.get(onnx_backend, max(MIN_TOKENS.values()))


def min_row_tokens(onnx_backend: str) -> int:
    """The row length from which OpenVINO runs a pass instead of ``onnx_backend``."""
    return MIN_ROW_TOKENS.get(onnx_backend, max(MIN_ROW_TOKENS.values()))


Precision = Literal["bf16", "f32"]

# The gate's probe texts: fixed, so the verdict is the same on every load, and of varied
# lengths (one word to more than 512 tokens, past any encoder's maximum: the truncated
# text is checked too); varied content and scripts, as served texts are.
_SENTENCE = (
    "The committee reviewed the annual budget in detail and agreed to fund the library, "
    "two new parks and a bicycle lane along the river before the end of the year."
)
PROBE_TEXTS: tuple[str, ...] = (
    "OK",
    "great product",
    "terrible service",
    "not bad at all",
    "would not buy again",
    "Arrived early and works great.",
    "Cold food, rude staff, and a forty-minute wait.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email account?",
    "Refunds are processed within 5-7 business days after we receive the item.",
    "The service was slow, but the food arrived warm and tasted great.",
    "I would not recommend this laptop: the battery died after two weeks.",
    "Une phrase en français, avec des accents: café, naïve, où.",
    "東京は日本の首都です。",
    "Great product 👍🙂 would buy again!!!",
    "ERROR 503: upstream connect error or disconnect/reset before headers.",
    "It was fine, I guess, though nothing about it stood out either way.",
    " ".join([_SENTENCE] * 2),
    " ".join([_SENTENCE] * 4),
    " ".join([_SENTENCE] * 20),
)


class Served(Protocol):
    backend: str


M = TypeVar("M", bound=Served)


@cache
def installed() -> bool:
    """Whether ``openvino`` can be imported (without importing it). Asked on every request's
    backend choice, so looked up once (about 90 us a lookup): a package installed while the
    server runs is seen at its next start."""
    return importlib.util.find_spec("openvino") is not None


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


@cache
def fast_bf16_cpu(cpuinfo: Path | None = None) -> bool:
    """Whether this CPU runs bf16 fast: it has AMX tiles for bf16 (``amx_bf16``, Sapphire
    Rapids and later Xeons). AVX-512 BF16 alone is not enough: there OpenVINO's bf16 did
    not measure ahead of ONNX Runtime int8. Unreadable ``/proc/cpuinfo`` (not Linux): no."""
    try:
        text = (cpuinfo or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "amx_bf16" in cpu_flags(text)


def auto_candidate(artifact: Artifact, onnx_files: Mapping[str, str]) -> bool:
    """Whether ``auto`` should try OpenVINO for ``artifact`` at load (the gate decides):
    its default is one of ``onnx_files``' backends, ``model.onnx`` is listed, openvino is
    installed and this CPU has AMX. Reads no settings: ``FNB_OPENVINO=off`` is honoured at
    load, where the settings are."""
    listed = artifact.manifest.get("files", {})
    default = artifact.manifest.get("default_backend")
    return (
        isinstance(default, str)
        and default in onnx_files
        and onnx_files[default] in listed
        and FILE in listed
        and installed()
        and fast_bf16_cpu(CPUINFO)
    )


def compile_config(settings: Settings, precision: Precision = "bf16") -> dict[str, Any]:
    """OpenVINO's CPU settings: ``precision`` for the matrix products, the gateway's thread
    count, and one stream tuned for latency (the batcher runs one batch at a time)."""
    return {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": settings.thread_count,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }


def openvino_runner(
    path: str, settings: Settings, precision: Precision = "bf16"
) -> tuple[RunFn, set[str]]:
    """A function running the graph at ``path`` on named int64 inputs (those the graph does
    not take are dropped) and returning its first output as float32, like
    :func:`~fnbundle.runtime.onnx.onnx_runner`; and the graph's input names.

    Dynamic batch and sequence axes stay dynamic. One infer request serves every thread,
    one run at a time (a lock): the batcher has one worker thread, a retired batcher's
    requests run unbatched from several."""
    if settings.openvino == "off":
        raise InvalidRequest(
            f"The {BACKEND} backend is off on this server (FNB_OPENVINO=off).", field="backend"
        )
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", compile_config(settings, precision))
    request = compiled.create_infer_request()
    output = compiled.output(0)
    names = {port.get_any_name() for port in compiled.inputs}
    lock = threading.Lock()

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in inputs.items() if k in names}
        with lock:
            result = request.infer(feed)
            # copied inside the lock: the next run reuses the request's output memory
            return np.array(result[output], dtype=np.float32, copy=True)

    return run, names


def by_size(small: RunFn, large: RunFn, min_tokens: int, min_row_tokens: int) -> RunFn:
    """A runner taking ``large`` for passes of at least ``min_tokens`` padded tokens or of
    rows at least ``min_row_tokens`` long, and ``small`` otherwise (both judged alike by
    the gate, so either may answer)."""

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        ids = inputs["input_ids"]
        large_pass = int(ids.size) >= min_tokens or int(ids.shape[-1]) >= min_row_tokens
        return large(inputs) if large_pass else small(inputs)

    return run


def by_backend(small: RunFn, large: RunFn, onnx_backend: str) -> RunFn:
    """:func:`by_size` with the bounds against ``onnx_backend``, the default ``small`` runs
    (:func:`min_tokens`, :func:`min_row_tokens`)."""
    return by_size(small, large, min_tokens(onnx_backend), min_row_tokens(onnx_backend))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def gated_load(
    model_id: str,
    load: Callable[[str], M],
    onnx_backend: str,
    score: Callable[[M], np.ndarray],
    rule: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    settings: Settings,
    combine: Callable[[M, M], M] | None = None,
) -> M:
    """The model ``auto`` serves: OpenVINO (``load(BACKEND)``) when ``FNB_OPENVINO`` is
    ``auto`` and its ``score`` on :data:`PROBE_TEXTS`' outputs passes ``rule`` (the task's
    int8 parity rule) against :data:`REFERENCE`'s (loaded for the check only, unless it is
    the default), else the ONNX Runtime default (``load(onnx_backend)``). The default loads
    first: its own failure fails the load as always; any OpenVINO failure is logged and the
    default serves. ``combine(openvino_model, onnx_model)``, given, makes the model served
    once the gate passed (small passes on the default: :func:`by_size`)."""
    onnx_model = load(onnx_backend)
    if settings.openvino == "off":
        return onnx_model
    try:
        candidate = load(BACKEND)
        reference = onnx_model if onnx_backend == REFERENCE else load(REFERENCE)
        record = rule(score(reference), score(candidate))
        del reference
    except Exception as exc:
        reason = f"OpenVINO failed ({_first_line(exc)})"
        log.warning("model %s: serving %s, not %s: %s", model_id, onnx_backend, BACKEND, reason)
        return onnx_model
    figures = {k: v for k, v in record.items() if k not in {"rules", "passed"}}
    if not record.get("passed"):
        log.warning(
            "model %s: serving %s, not %s: it failed the parity gate against %s on %d probe "
            "texts (%s; rule %s)",
            model_id,
            onnx_backend,
            BACKEND,
            REFERENCE,
            len(PROBE_TEXTS),
            figures,
            record.get("rules"),
        )
        return onnx_model
    log.info(
        "model %s: serving %s (parity against %s: %s; passes under %d padded tokens with "
        "rows under %d on %s)",
        model_id,
        BACKEND,
        REFERENCE,
        figures,
        min_tokens(onnx_backend),
        min_row_tokens(onnx_backend),
        onnx_backend,
    )
    return combine(candidate, onnx_model) if combine is not None else candidate
