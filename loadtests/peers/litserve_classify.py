"""Peer P1: LitServe serving the classifier's int8 ONNX export with its own dynamic batching.

Runs in its own virtualenv (``.peers/litserve``, ``make peers``), not the project's. The
model is the gateway's own: ``model.int8.onnx`` and ``tokenizer.json`` of the artifact,
through the same ONNX Runtime session settings as baseline B2 (``baseline_onnx.py``:
``--threads`` intra-op threads, full graph optimisation, batches padded to their longest
text, 128-token truncation). It answers ``POST /v1/classify`` with the gateway's request
and response shape, so the same load generator drives both.

Key rule: LitServe's documented settings for a CPU model with batching, chosen by a short
sweep on this machine (docs/BENCHMARKS.md): one worker (``workers_per_device=1``: a second
would share the same two cores), ``max_batch_size`` and ``batch_timeout`` on the ``LitAPI``,
and ``fast_queue`` (its ZeroMQ queue between the HTTP process and the worker) on or off.

Run: ``.peers/litserve/bin/python loadtests/peers/litserve_classify.py --artifact <dir>
--port 8003``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import litserve as ls

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # loadtests/: baseline_onnx

from baseline_onnx import OnnxBatchBaseline


class ClassifierAPI(ls.LitAPI):
    def __init__(self, artifact: Path, threads: int, **batching) -> None:
        super().__init__(api_path="/v1/classify", **batching)
        self.artifact, self.threads = artifact, threads

    def setup(self, device: str) -> None:
        self.model = OnnxBatchBaseline(self.artifact, self.threads)
        self.labels = json.loads((self.artifact / "manifest.json").read_text())["labels"]

    def decode_request(self, request: dict) -> str:
        (text,) = request["texts"]  # one text per request, as the benchmark sends
        return str(text)

    def batch(self, inputs: list[str]) -> list[str]:
        return inputs

    def predict(self, texts: list[str]):  # -> np.ndarray of probabilities, one row a text
        return self.model.predict(texts)

    def unbatch(self, output) -> list:
        return list(output)

    def encode_response(self, probs) -> dict:
        best = int(probs.argmax())
        return {"predictions": [{"label": self.labels[best], "score": float(probs[best])}]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True, help="the classifier's folder")
    p.add_argument("--port", type=int, default=8003)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    p.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queue")
    args = p.parse_args()
    api = ClassifierAPI(
        args.artifact,
        args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.fast_queue)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
