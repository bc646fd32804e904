"""ONNX export of a trained classifier, int8 quantization, and the parity check.

Key rule: an export is served by default only if it agrees with the PyTorch model on the
evaluation texts, tokenized exactly as the server tokenizes them: for fp32 every argmax
equal and every probability within 1e-3; for int8 at least 98% of argmaxes equal and a
mean probability difference under 0.02 (the maximum is recorded, not judged: one review
on the decision boundary can move 0.15 while the answers agree). The numbers are
recorded in the manifest either way.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fnbundle.classifier import softmax

log = logging.getLogger(__name__)

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
PARITY_RULES = {
    "onnx-fp32": {"min_agreement": 1.0, "max_prob_diff": 1e-3},
    "onnx-int8": {"min_agreement": 0.98, "mean_prob_diff": 0.02},
}
ONNX_OPSET = 17
PARITY_BATCH = 32  # texts per forward pass while checking


def export_onnx(model: Any, sample: dict[str, np.ndarray], path: Path) -> None:
    """Trace ``model`` to ONNX with dynamic batch and sequence axes."""
    import torch

    names = [n for n in INPUT_NAMES if n in sample]
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    model.eval()
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns about Python branches on shapes inside transformers' mask code;
        # for encoders they are constant, and the parity check below proves the graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter handles HF encoders without extra deps
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 weights, one scale per output channel.

    ``reduce_range`` (7-bit weights) avoids overflow in the int8 kernels of CPUs without
    VNNI; per-channel scales win back what it costs: per-tensor scales moved the argmax
    of 6% of held-out reviews on the demo model, per-channel none.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=True, per_channel=True
    )


def _onnx_probs(path: Path, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = [
        softmax(session.run(None, {k: v for k, v in b.items() if k in names})[0]) for b in batches
    ]
    return np.concatenate(out)


def parity(reference: np.ndarray, candidate: np.ndarray, backend: str) -> dict[str, Any]:
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    diffs = np.abs(reference - candidate).max(axis=1)
    max_diff, mean_diff = float(diffs.max()), float(diffs.mean())
    rules = PARITY_RULES[backend]
    passed = agreement >= rules["min_agreement"]
    passed &= max_diff <= rules.get("max_prob_diff", 1.0)
    passed &= mean_diff <= rules.get("mean_prob_diff", 1.0)
    return {
        "agreement": round(agreement, 4),
        "max_prob_diff": round(max_diff, 6),
        "mean_prob_diff": round(mean_diff, 6),
        "passed": bool(passed),
        "rules": rules,
        "examples": len(reference),
    }


def export_with_parity(
    model: Any,
    encode: Callable[[Sequence[str]], dict[str, np.ndarray]],
    texts: Sequence[str],
    folder: Path,
) -> dict[str, Any]:
    """Write model.onnx and model.int8.onnx into ``folder``; return their parity records."""
    import torch

    batches = [encode(texts[i : i + PARITY_BATCH]) for i in range(0, len(texts), PARITY_BATCH)]
    model.eval()
    with torch.inference_mode():
        names = set(INPUT_NAMES)
        reference = np.concatenate(
            [
                softmax(
                    model(**{k: torch.from_numpy(v) for k, v in b.items() if k in names})
                    .logits.float()
                    .numpy()
                )
                for b in batches
            ]
        )
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    sample = encode(["a short sample", "a somewhat longer sample sentence for tracing shapes"])
    export_onnx(model, sample, fp32)
    quantize_int8(fp32, int8)
    records = {
        "onnx-fp32": {
            "file": fp32.name,
            **parity(reference, _onnx_probs(fp32, batches), "onnx-fp32"),
        },
        "onnx-int8": {
            "file": int8.name,
            **parity(reference, _onnx_probs(int8, batches), "onnx-int8"),
        },
    }
    for backend, record in records.items():
        log.info(
            "%s parity: agreement %.4f, max prob diff %.2e, passed=%s",
            backend,
            record["agreement"],
            record["max_prob_diff"],
            record["passed"],
        )
    return records


def default_backend(records: dict[str, dict[str, Any]]) -> str:
    """The fastest export that passed parity; PyTorch when none did."""
    for backend in ("onnx-int8", "onnx-fp32"):
        if records.get(backend, {}).get("passed"):
            return backend
    return "torch"
