"""Baseline B2: an in-process ONNX Runtime int8 session on batches, no HTTP.

The ceiling for a served model on this machine: the artifact's ``model.int8.onnx`` and
``tokenizer.json`` (through the ``tokenizers`` library), batches of 32 texts padded to
their longest text, every core for inference and nothing else in the way.

Key rule: written against onnxruntime and tokenizers directly, not through ``fnbundle``,
so it measures what the gateway could reach, not the gateway's own code path; its
settings (threads, truncation, graph optimisation) match what the gateway uses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_TOKENS = 128  # the gateway's FNB_MAX_TOKENS default


@dataclass
class BatchResult:
    texts: int
    batches: int
    wall_s: float
    batch_ms: list[float]

    @property
    def throughput(self) -> float:  # texts/s
        return self.texts / self.wall_s if self.wall_s else 0.0


class OnnxBatchBaseline:
    def __init__(self, artifact_dir: Path, threads: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(artifact_dir / "model.int8.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(artifact_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")  # to the batch's longest

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        logits = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)

    def run(self, texts: Sequence[str], batch_size: int, duration_s: float) -> BatchResult:
        """Classify consecutive batches of ``texts`` (cycling) for ``duration_s``."""
        self.predict(texts[:batch_size])  # warm-up: the first run allocates
        result = BatchResult(0, 0, 0.0, [])
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < duration_s:
            batch = [texts[(i + k) % len(texts)] for k in range(batch_size)]
            start = time.perf_counter()
            self.predict(batch)
            result.batch_ms.append((time.perf_counter() - start) * 1000)
            result.texts += batch_size
            result.batches += 1
            i += batch_size
        result.wall_s = time.perf_counter() - t0
        return result
