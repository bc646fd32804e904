"""Peer P2: BentoML serving the classifier's int8 ONNX export with adaptive batching.

Runs in its own virtualenv (``.peers/bentoml``, ``make peers``) under ``bentoml serve
bentoml_classify:Classifier`` from this folder. The model is the gateway's own
(``model.int8.onnx`` and ``tokenizer.json`` of the artifact) through the same ONNX Runtime
session as baseline B2 (``baseline_onnx.py``). ``POST /v1/classify`` takes
``{"texts": [...]}`` and answers one ``{"label", "score"}`` per text (a JSON list: a
batchable API's output is the batch itself).

Key rule: BentoML's current API (``@bentoml.service``, ``@bentoml.api(batchable=True,
max_batch_size, max_latency_ms)``), one worker (a second would share the same two cores);
the batch settings come from the environment because the decorators read them at import
time: ``PEER_ARTIFACT`` (required), ``PEER_THREADS`` (2), ``PEER_MAX_BATCH_SIZE`` (32),
``PEER_MAX_LATENCY_MS`` (the benchmark's choice, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import bentoml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # loadtests/: baseline_onnx

from baseline_onnx import OnnxBatchBaseline

ARTIFACT = Path(os.environ.get("PEER_ARTIFACT", "."))
THREADS = int(os.environ.get("PEER_THREADS", "2"))
MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "32"))
MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "60000"))  # BentoML's default


# per-request access logs off, as for the gateway and LitServe (their uvicorn logs warnings)
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Classifier:
    def __init__(self) -> None:
        self.model = OnnxBatchBaseline(ARTIFACT, THREADS)
        self.labels = json.loads((ARTIFACT / "manifest.json").read_text())["labels"]

    @bentoml.api(
        route="/v1/classify",
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def classify(self, texts: list[str]) -> list[dict]:
        probs = self.model.predict(texts)
        best = probs.argmax(axis=-1)
        return [
            {"label": self.labels[int(b)], "score": float(row[b])}
            for b, row in zip(best, probs, strict=True)
        ]
