"""The embedder's int8 candidates: how close each stays to fp32 and how fast it runs.

Takes an imported embedder (``builtin:minilm`` in the benchmark store, from ``make
bench-embed``), builds each quantized variant of its fused fp32 graph, and reports:

* the cosine of every text's mean-pooled, normalised vector to the fp32 graph's, over the
  short and unseen demo reviews and the last shipped reviews (minimum overall, under 8
  tokens, from 12 tokens on; the export's gate is a minimum of 0.99 on every text);
* throughput of one ONNX Runtime session on batches of 32 texts of 128 tokens, the
  variants interleaved per round (median of rounds; on a shared 2-core machine a ratio
  holds and an absolute figure does not).

Variants: the shipped export (dynamic int8 per channel, 7-bit weights, each feed-forward
output kept in fp32); dynamic int8 on every MatMul (8-bit); static QDQ int8 calibrated by
MinMax on 400 training reviews; weight-only int8 and int4 (``MatMulNBits``, blocks of 32,
accuracy level 4: int8 compute).

Run: ``.venv/bin/python loadtests/quant_embed.py [--artifact <store>/models/<id>]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
BATCH = 32
SHORT_TOKENS, LONG_TOKENS = 8, 12


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Embedder int8 variants: accuracy and speed.")
    p.add_argument(
        "--artifact", type=Path, help="an embedder's folder (default: the bench store's minilm)"
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "quant_embed.json")
    return p.parse_args()


def default_artifact() -> Path:
    store = REPO / ".bench" / "store"
    alias = store / "aliases" / "minilm.json"
    if not alias.is_file():
        raise SystemExit(f"no {alias}: run `make bench-embed` once to import builtin:minilm")
    return store / "models" / json.loads(alias.read_text())["id"]


def texts(name: str, last: int | None = None) -> list[str]:
    with (DATA / name).open(newline="", encoding="utf-8") as f:
        rows = [row["text"] for row in csv.DictReader(f)]
    return rows[-last:] if last else rows


class Encoder:
    """Pads batches the way the gateway does and runs one graph's session."""

    def __init__(self, artifact: Path, threads: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(256)
        self.threads = threads

    def session(self, path: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def feed(self, batch: list[str]) -> tuple[dict[str, np.ndarray], list[int]]:
        encoded = [self.tokenizer.encode(t).ids for t in batch]
        width = max(map(len, encoded))
        ids = np.zeros((len(batch), width), np.int64)
        for i, row in enumerate(encoded):
            ids[i, : len(row)] = row
        mask = (ids != 0).astype(np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}, [
            len(r) for r in encoded
        ]

    def vectors(self, session: Any, corpus: list[str]) -> tuple[np.ndarray, np.ndarray]:
        out, lengths = [], []
        for i in range(0, len(corpus), 8):
            feed, n = self.feed(corpus[i : i + 8])
            v = session.run(None, feed)[0]
            out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
            lengths += n
        return np.concatenate(out), np.asarray(lengths)


def calibration(encoder: Encoder, corpus: list[str]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = iter(
                encoder.feed(corpus[i : i + 8])[0] for i in range(0, len(corpus), 8)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Reader()


def variants(artifact: Path, encoder: Encoder, work: Path) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    src = artifact / "model.onnx"
    float_default = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    made = {"fp32": src, "shipped int8 (FFN output fp32, 7-bit)": artifact / "model.int8.onnx"}
    made["dynamic int8, every MatMul"] = work / "dynamic.onnx"
    quantize_dynamic(
        str(src), str(made["dynamic int8, every MatMul"]), weight_type=QuantType.QInt8,
        per_channel=True, op_types_to_quantize=["MatMul"], extra_options=float_default,
    )  # fmt: skip
    made["static QDQ int8, MinMax"] = work / "static.onnx"
    quantize_static(
        str(src), str(made["static QDQ int8, MinMax"]),
        calibration(encoder, texts("reviews.csv")[:400]), quant_format=QuantFormat.QDQ,
        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
        extra_options=float_default,
    )  # fmt: skip
    for bits in (8, 4):
        name = f"weight-only int{bits} (MatMulNBits)"
        config = DefaultWeightOnlyQuantConfig(
            block_size=32, is_symmetric=True, accuracy_level=4, bits=bits
        )
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
        quantizer.process()
        made[name] = work / f"nbits{bits}.onnx"
        quantizer.model.save_model_to_file(str(made[name]), True)
    return made


def throughput(session: Any, encoder: Encoder, seconds: float) -> float:
    ids = np.full((BATCH, 128), 1037, np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
    session.run(None, feed)
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        session.run(None, feed)
        runs += 1
    return BATCH * runs / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    artifact = args.artifact or default_artifact()
    encoder = Encoder(artifact, args.threads)
    corpus = texts("reviews_short.csv") + texts("reviews_unseen.csv") + texts("reviews.csv", 250)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fnb-quant-") as tmp:
        graphs = variants(artifact, encoder, Path(tmp))
        sessions = {name: encoder.session(path) for name, path in graphs.items()}
        reference, lengths = encoder.vectors(sessions["fp32"], corpus)
        for name, session in sessions.items():
            cosine = (encoder.vectors(session, corpus)[0] * reference).sum(axis=1)
            pick: dict[str, Callable[[np.ndarray], np.ndarray]] = {
                "min": lambda c: c,
                f"min under {SHORT_TOKENS} tokens": lambda c: c[lengths < SHORT_TOKENS],
                f"min from {LONG_TOKENS} tokens": lambda c: c[lengths >= LONG_TOKENS],
            }
            rows[name] = {k: round(float(f(cosine).min()), 4) for k, f in pick.items()}
            rows[name]["mean"] = round(float(cosine.mean()), 4)
            rows[name]["texts/s"] = []
        for _ in range(args.rounds):
            for name, session in sessions.items():
                rows[name]["texts/s"].append(throughput(session, encoder, args.duration))
    print(
        f"{len(corpus)} texts ({int((lengths < SHORT_TOKENS).sum())} under {SHORT_TOKENS} tokens)"
    )
    print(
        f"{'variant':40s} {'min':>7s} {'<8 tok':>7s} {'>=12':>7s} {'mean':>7s} {'128-tok texts/s':>16s}"
    )
    for name, row in rows.items():
        row["texts/s median"] = round(statistics.median(row["texts/s"]), 1)
        values = list(row.values())
        print(
            f"{name:40s} "
            + " ".join(f"{v:7.4f}" for v in values[:4])
            + f" {row['texts/s median']:16.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"texts": len(corpus), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
