"""One short text embedded in process: fnbundle's call against fastembed's path, call by call.

Rounds of seconds (``bench_embed.py``) cannot tell two in-process calls within a few
percent apart on a machine whose speed moves by 10-30% from one second to the next. This
alternates the two calls one by one in one process, so both see the same second:

* ``fnbundle``: ``load_embedder(artifact).embed([text])``, the gateway's settings;
* ``fastembed's path``: what ``TextEmbedding.embed`` does, rebuilt on the same ONNX Runtime
  settings as fastembed's (2 intra- and inter-op threads, full graph optimisation): the
  tokenizer's ``encode_batch``, the peers' copy of the graph cut before its pooling
  (``peers/models.py``), mean pooling and normalising in numpy. fastembed's own package
  is not imported: its pins conflict with the project's (``make peers`` keeps it apart).

Both sessions stop spinning when a run returns, so neither steals the other's cores;
the vectors are checked to agree before timing. Also reported: the pass alone from token
ids (the pooled graph against the cut graph plus numpy pooling) for one text of the
median length.

Run: ``.venv/bin/python loadtests/paired_embed_call.py --store .bench/store``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.models import embedder_folder
from review_texts import short_reviews

REPO = Path(__file__).resolve().parents[1]


def fastembed_path(
    folder: Path, threads: int
) -> tuple[Callable[[list[str]], np.ndarray], Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """fastembed's ``embed`` for a list of texts, and its pass on model inputs."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1")
    session = ort.InferenceSession(str(folder / "model.onnx"), options)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(256)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        # fastembed's own mean pooling and normalising, as its TextEmbedding does them
        hidden = session.run(None, feed)[0]
        weights = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def embed(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return run({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})

    return embed, run


def paired(a: Callable[[], Any], b: Callable[[], Any], calls: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, called alternately (ABBA...)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(calls):
        for k in (0, 1) if i % 2 else (1, 0):
            start = time.perf_counter()
            (a, b)[k]()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=REPO / ".bench" / "store")
    p.add_argument("--model", default="minilm", help="an embedding model of --store")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=400, help="calls of each per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "paired")
    args = p.parse_args()

    from fnbundle.loading import builtin_dir
    from fnbundle.settings import Settings
    from fnbundle.store import Store
    from fnbundle.tasks.embed.model import load_embedder

    store = Store(args.store)
    artifact = store.get(store.resolve_id(args.model))
    ours = load_embedder(artifact, Settings(store=args.store, threads=args.threads))
    folder = embedder_folder(artifact.path, builtin_dir("minilm"), args.out)
    theirs, their_pass = fastembed_path(folder, args.threads)
    texts = short_reviews()
    worst = min(float(np.dot(ours.embed([t])[0], theirs([t])[0])) for t in texts[:50])
    print(f"fnbundle {ours.backend}; lowest cosine to fastembed's path {worst:.5f}")
    ids = sorted((ours.tokenize([t])[0] for t in texts), key=len)[len(texts) // 2]
    feed = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
    }
    calls = iter(range(10**9))

    def next_text() -> list[str]:
        return [texts[next(calls) // 2 % len(texts)]]  # each text once for both

    paired(lambda: ours.embed(next_text()), lambda: theirs(next_text()), 100)  # warm-up
    for rnd in range(args.rounds):
        a, b = paired(lambda: ours.embed(next_text()), lambda: theirs(next_text()), args.calls)
        pa, pb = paired(lambda: ours.embed_tokens([ids]), lambda: their_pass(feed), 100)
        print(
            f"round {rnd + 1}: call {a * 1e3:.3f} / {b * 1e3:.3f} ms = {a / b:.3f}; "
            f"pass of 1 x {len(ids)} tokens {pa * 1e3:.3f} / {pb * 1e3:.3f} ms = {pa / pb:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
