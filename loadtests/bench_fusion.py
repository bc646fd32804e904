"""Graph fusion for the classifier's ONNX export: fused against plain, fp32 and int8.

Exports one trained classifier (a store artifact with ``model.safetensors``) twice, plain
and fused (:mod:`fnbundle.training.fusion`), quantizes both to int8 with the export's own
recipe, checks each against PyTorch with the export's parity rules, then times in-process
ONNX Runtime sessions on batches of 32 texts: 128-token texts and short reviews.

Key rule: the four graphs run interleaved (plain, fused, plain, fused for each precision
and text set, then the next round) on the same machine and thread count, and the verdict
is the ratio of medians over at least 5 rounds: on a shared 2-core machine a ratio holds
and an absolute time does not.

Run: ``.venv/bin/python loadtests/bench_fusion.py --artifact <store>/models/<id>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from review_texts import long_texts, short_reviews

BATCH = 32  # texts per forward pass, as the gateway's batcher and baseline B2
GRAPHS = ("plain", "fused")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Classifier export: fused vs plain ONNX graphs.")
    p.add_argument("--artifact", type=Path, required=True, help="a trained classifier's folder")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per run")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--parity-texts", type=int, default=200, help="short reviews for parity")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args()


def export_both(artifact: Path, texts: list[str], work: Path) -> dict[str, Any]:
    """Plain and fused fp32 graphs, their int8 versions, and every parity record."""
    import torch
    from fnbundle.runtime.tokenizer import encode, load_tokenizer
    from fnbundle.tasks.classify.model import softmax
    from fnbundle.training.export import (
        PARITY_BATCH,
        _onnx_probs,
        export_onnx,
        fused_export,
        parity,
        quantize_int8,
    )
    from transformers import AutoModelForSequenceClassification

    manifest = json.loads((artifact / "manifest.json").read_text())
    meta = manifest["tokenizer"]
    tokenizer = load_tokenizer(artifact / "tokenizer.json", meta, int(meta["max_length"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(artifact))
    model.eval()
    batches = [encode(tokenizer, texts[i : i + PARITY_BATCH]) for i in range(0, len(texts), 32)]
    with torch.inference_mode():
        reference = np.concatenate(
            [
                softmax(model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy())
                for b in batches
            ]
        )
    sample = encode(tokenizer, ["a short sample", "a somewhat longer sample for tracing"])
    files = {("plain", "fp32"): work / "plain.onnx", ("fused", "fp32"): work / "fused.onnx"}
    export_onnx(model, sample, files["plain", "fp32"])
    records = {
        "fused fp32": fused_export(model, sample, files["fused", "fp32"], batches, reference)
    }
    records["plain fp32"] = parity(
        reference, _onnx_probs(files["plain", "fp32"], batches), "onnx-fp32"
    )
    for graph in GRAPHS:
        files[graph, "int8"] = work / f"{graph}.int8.onnx"
        quantize_int8(files[graph, "fp32"], files[graph, "int8"])
        records[f"{graph} int8"] = parity(
            reference, _onnx_probs(files[graph, "int8"], batches), "onnx-int8"
        )
    return {"files": files, "parity": records, "tokenizer": tokenizer}


def throughput(run: Any, batches: list[dict[str, np.ndarray]], duration_s: float) -> float:
    """Texts per second over consecutive batches (cycling) for ``duration_s``."""
    run(batches[0])  # the first run allocates
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < duration_s:
        batch = batches[i % len(batches)]
        run(batch)
        done += len(batch["input_ids"])
        i += 1
    return done / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args()
    from fnbundle.runtime.onnx import onnx_runner
    from fnbundle.runtime.tokenizer import encode
    from fnbundle.settings import Settings

    reviews = short_reviews()
    with tempfile.TemporaryDirectory(prefix="fnb-fusion-") as tmp:
        built = export_both(args.artifact, reviews[: args.parity_texts], Path(tmp))
        tokenizer = built["tokenizer"]
        sets = {
            "128 tokens": long_texts(args.artifact / "tokenizer.json", count=4 * BATCH),
            "short reviews": reviews[: 8 * BATCH],
        }
        batches = {
            name: [encode(tokenizer, t[i : i + BATCH]) for i in range(0, len(t), BATCH)]
            for name, t in sets.items()
        }
        settings = Settings(threads=args.threads)
        runners = {key: onnx_runner(str(path), settings)[0] for key, path in built["files"].items()}
        figures: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for text_set in sets:
                for precision in ("fp32", "int8"):
                    for graph in GRAPHS:  # A B for each pair, every round
                        key = f"{text_set} {precision} {graph}"
                        tps = throughput(
                            runners[graph, precision], batches[text_set], args.duration
                        )
                        figures.setdefault(key, []).append(tps)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    print("\nparity (against PyTorch):")
    for name, record in built["parity"].items():
        summary = {
            k: record.get(k) for k in ("agreement", "max_prob_diff", "mean_prob_diff", "passed")
        }
        print(f"  {name:11s} {summary} {record.get('fused_ops', '')}")
    print(
        f"\nthroughput, texts/s (median of {args.rounds}, {args.threads} threads, batches of {BATCH}):"
    )
    result: dict[str, Any] = {"parity": built["parity"], "rounds": figures, "ratios": {}}
    for text_set in sets:
        for precision in ("fp32", "int8"):
            plain = statistics.median(figures[f"{text_set} {precision} plain"])
            fused = statistics.median(figures[f"{text_set} {precision} fused"])
            pairs = [
                f / p
                for p, f in zip(
                    figures[f"{text_set} {precision} plain"],
                    figures[f"{text_set} {precision} fused"],
                    strict=True,
                )
            ]
            ratio = statistics.median(pairs)
            result["ratios"][f"{text_set} {precision}"] = round(ratio, 3)
            print(
                f"  {text_set:14s} {precision}: plain {plain:6.1f}  fused {fused:6.1f}  "
                f"fused/plain {ratio:.2f} (per-round pairs {min(pairs):.2f}-{max(pairs):.2f})"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
