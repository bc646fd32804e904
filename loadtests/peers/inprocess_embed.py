"""Embedding libraries in process: fastembed, sentence-transformers' ONNX backend, and
fnbundle's own embedder (what a user who embeds in their own process would call instead).

The peers run in their own virtualenvs (``.peers/fastembed``, ``.peers/st-onnx``; ``make
peers``) on the peers' copy of the embedder (``models.py``: the gateway's fused fp32 graph
before its pooling, the gateway's tokenizer), with ``--threads`` ONNX Runtime threads;
``fnbundle`` runs in the project's virtualenv on the artifact folder itself
(``load_embedder`` with the gateway's default backend and ``--threads``). A library
used in process has no server: the benchmark starts this worker once and drives it over
a pipe, one JSON command a line on stdin, one JSON answer a line on stdout:

* on start: ``{"ready": true, "library": ..., "version": ..., "probe": [vector]}``, the
  probe being the vector of :data:`PROBE` (the benchmark checks it against the gateway's);
* ``{"texts": [...], "batch": 32, "duration": 5.0, "warmup": 1.0}``: consecutive calls
  embedding ``batch`` texts each (cycling through ``texts``) for ``duration`` seconds after
  ``warmup`` unmeasured seconds; the answer ``{"throughput": texts/s, "p50_ms": per call}``.

Key rule: each library is called the way its documentation shows for throughput
(fastembed: ``TextEmbedding.embed(texts, batch_size)``; sentence-transformers:
``encode(texts, batch_size)``; fnbundle: ``TextEmbedder.embed(texts)``) and returns
normalised mean-pooled vectors like the gateway.

Run: ``.peers/fastembed/bin/python loadtests/peers/inprocess_embed.py --library fastembed
--model-dir <folder>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np

PROBE = "A probe."
FASTEMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # fastembed's name for MiniLM-L6

Encoder = Callable[[list[str]], np.ndarray]


def fastembed_encoder(model_dir: Path, threads: int) -> Encoder:
    from fastembed import TextEmbedding

    model = TextEmbedding(
        model_name=FASTEMBED_MODEL,
        specific_model_path=str(model_dir),
        threads=threads,
        local_files_only=True,
    )

    def encode(texts: list[str]) -> np.ndarray:
        return np.stack(list(model.embed(texts, batch_size=len(texts))))

    return encode


def st_onnx_encoder(model_dir: Path, threads: int) -> Encoder:
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = SentenceTransformer(
        str(model_dir),
        backend="onnx",
        device="cpu",
        local_files_only=True,
        model_kwargs={
            "file_name": "model.onnx",
            "provider": "CPUExecutionProvider",
            "session_options": options,
        },
    )

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=len(texts), normalize_embeddings=True)

    return encode


def fnbundle_encoder(model_dir: Path, threads: int) -> Encoder:
    """``model_dir`` is an artifact folder of a store (``<store>/models/<id>``)."""
    from fnbundle.settings import Settings
    from fnbundle.store import Store
    from fnbundle.tasks.embed.model import load_embedder

    store = Store(model_dir.parent.parent)
    model = load_embedder(store.get(model_dir.name), Settings(store=store.root, threads=threads))
    return model.embed


LIBRARIES = {
    "fastembed": (fastembed_encoder, "fastembed"),
    "st-onnx": (st_onnx_encoder, "sentence-transformers"),
    "fnbundle": (fnbundle_encoder, "fnbundle"),
}


def run(encode: Encoder, command: dict) -> dict:
    texts, batch = command["texts"], int(command["batch"])
    i = 0

    def calls(seconds: float) -> tuple[int, float, list[float]]:
        nonlocal i
        done, times_ms = 0, []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
            start = time.perf_counter()
            vectors = encode(chunk)
            times_ms.append((time.perf_counter() - start) * 1000)
            if len(vectors) != batch:
                raise RuntimeError(f"{len(vectors)} vectors for {batch} texts")
            done += batch
            i += batch
        return done, time.perf_counter() - t0, times_ms

    calls(float(command.get("warmup", 0)))
    done, wall_s, times_ms = calls(float(command["duration"]))
    return {"throughput": done / wall_s, "p50_ms": statistics.median(times_ms)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", choices=sorted(LIBRARIES), required=True)
    p.add_argument(
        "--model-dir",
        type=Path,
        required=True,
        help="the peers' embedder folder (fnbundle: the artifact's folder in its store)",
    )
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = p.parse_args()
    build, package = LIBRARIES[args.library]
    encode = build(args.model_dir, args.threads)
    probe = encode([PROBE])[0]
    ready = {"ready": True, "library": args.library, "version": version(package)}
    print(json.dumps({**ready, "probe": [float(x) for x in probe]}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(encode, json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
