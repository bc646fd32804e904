"""The gateway's levers, measured in process: each against the way the gateway ran before.

Takes one trained classifier (a store artifact with its fused ``model.onnx``,
``model.int8.onnx`` and ``model.safetensors``) and times ONNX Runtime on the work the
gateway's batcher gives it: batches of 32 short reviews, of 32 texts of 128 tokens, and a
mix (three short reviews to one 128-token text, as when short and long requests meet in
one batch). Levers (``--levers``, default all):

* ``padding``: one batch padded to its longest text, against the batch split into length
  groups (:func:`fnbundle.runtime.batching.length_groups`) for several pass costs;
* ``ort``: ONNX Runtime session options (thread spinning, execution mode, inter-op
  threads, graph optimization level, intra-op threads), also on one text (the latency);
* ``tokenize``: tokenizing a batch before its forward pass against tokenizing the next
  batch in another thread while the model runs (how the gateway overlaps them), with
  spinning on and off; and the response's JSON encoding per text;
* ``int8``: the shipped dynamic int8 against static int8 calibrated on training reviews
  (QDQ and QOperator formats, from the fused and the plain graph), each checked against
  PyTorch with the export's int8 parity rule on the unseen reviews;
* ``openvino``: the OpenVINO runtime on the same ONNX files (``--openvino-path``: where the
  ``openvino`` wheel is installed, when it is not in the environment), parity checked too;
* ``gateway``: ``fnbundle serve`` as it was (``--before``: a ``shared/`` folder of an
  earlier commit, ``git archive <commit> shared | tar -x -C <dir>``) against this tree's,
  and this tree's with length groups off and with ONNX Runtime's spinning on, all serving
  ``--model`` from ``--store`` at once (``--variants``: a comma-separated subset),
  one-text ``POST /v1/classify`` requests from a closed loop (short reviews, the mix,
  128-token texts at 32 clients; short at 1 client); with ``--embed-model``, one-text
  ``POST /v1/embeddings`` requests of short reviews too (32 clients and 1).

Key rule: a lever's variants run interleaved (A, B, C, then the next round) in one process
on the same threads, and the verdict is the median over rounds of each variant's ratio to
the first (the gateway's setting before) in the same round: on a shared 2-core machine a
ratio holds and an absolute time does not.

Run: ``.venv/bin/python loadtests/bench_levers.py --artifact <store>/models/<id>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from review_texts import REPO, long_texts, short_reviews

BATCH = 32  # texts per forward pass, as the gateway's batches at 32 clients
LEVERS = ("padding", "ort", "tokenize", "int8", "openvino", "gateway")
Work = Callable[[], int]  # runs once, returns the texts it processed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="In-process A/B of the gateway's levers.")
    p.add_argument("--artifact", type=Path, required=True, help="a trained classifier's folder")
    p.add_argument("--levers", default=",".join(LEVERS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds measured per run")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--openvino-path", type=Path, help="a folder holding the openvino package")
    p.add_argument("--before", type=Path, help="gateway: the shared/ folder served as before")
    p.add_argument(
        "--after", type=Path, default=REPO / "shared", help="gateway: the shared/ folder to test"
    )
    p.add_argument("--store", type=Path, help="gateway: the store holding --model")
    p.add_argument("--model", default="sentiment", help="gateway: the store name served")
    p.add_argument(
        "--embed-model",
        help="gateway: an embedding model of --store; its one-text /v1/embeddings requests "
        "are measured too",
    )
    p.add_argument(
        "--variants",
        default=",".join(GATEWAY_VARIANTS),
        help="gateway: the servers to compare, comma-separated (the first is the reference)",
    )
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "levers.json")
    return p.parse_args()


# --- inputs -----------------------------------------------------------------------------
class Inputs:
    """The artifact's tokenizer and the three workloads as token arrays."""

    def __init__(self, artifact: Path):
        from fnbundle.runtime.tokenizer import load_tokenizer, pad_id, token_ids

        manifest = json.loads((artifact / "manifest.json").read_text())
        self.tokenizer = load_tokenizer(artifact / "tokenizer.json", manifest["tokenizer"], 128)
        self.pad_id = pad_id(self.tokenizer)
        self.short_texts = short_reviews()
        self.long_texts = long_texts(artifact / "tokenizer.json", count=96)
        short = token_ids(self.tokenizer, self.short_texts)
        long = token_ids(self.tokenizer, self.long_texts)
        mixed = [long[(i // 4) % len(long)] if i % 4 == 3 else short[i] for i in range(len(short))]
        self.ids = {"short": short, "128 tokens": long, "mixed": mixed}

    def batches(self, name: str) -> Iterator[list[list[int]]]:
        """Endless batches of BATCH token arrays, in the same order for every variant."""
        ids = self.ids[name]
        start = 0
        while True:
            if start + BATCH > len(ids):
                start = 0
            yield ids[start : start + BATCH]
            start += BATCH


def session(path: Path, threads: int, **config: Any) -> Any:
    """An ONNX Runtime session; ``config`` names SessionOptions attributes, and the
    ``spinning`` key sets both allow_spinning config entries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spinning = config.pop("spinning", None)
    for key, value in config.items():
        setattr(options, key, value)
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
        options.add_session_config_entry("session.inter_op.allow_spinning", str(int(spinning)))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(sess: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return lambda feed: sess.run(None, {k: v for k, v in feed.items() if k in names})[0]


def rate(work: Work, seconds: float) -> tuple[float, float]:
    """Texts per wall-clock second and per CPU second of this process (all its threads) of
    ``work`` run back to back for ``seconds`` (after one warm run). On a machine shared
    with other work the CPU figure holds where the wall clock counts others' time; a
    spinning thread counts as CPU, so settings that change spinning read the wall clock."""
    work()
    start, cpu, texts = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        texts += work()
    return texts / (time.perf_counter() - start), texts / (time.process_time() - cpu)


def interleave(variants: dict[str, Work], rounds: int, seconds: float) -> dict[str, Any]:
    """Each variant's texts/s per round (A, B, C, ... per round) and its ratio to the first,
    by the wall clock and by CPU time."""
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, work in variants.items():
            rates[name].append(rate(work, seconds))
    first = next(iter(rates.values()))
    out = {}
    for name, values in rates.items():
        ratios = [v[0] / f[0] for v, f in zip(values, first, strict=True)]
        cpu_ratios = [v[1] / f[1] for v, f in zip(values, first, strict=True)]
        out[name] = {
            "texts/s": round(statistics.median(v[0] for v in values), 1),
            "ratio": round(statistics.median(ratios), 3),
            "ratios": [round(r, 2) for r in ratios],
            "texts/cpu-s": round(statistics.median(v[1] for v in values), 1),
            "cpu ratio": round(statistics.median(cpu_ratios), 3),
            "cpu ratios": [round(r, 2) for r in cpu_ratios],
        }
    return out


def report(title: str, rows: dict[str, Any]) -> None:
    print(f"\n{title}  (texts/s, ratio (range); texts per CPU-s, ratio (range))", flush=True)
    for name, row in rows.items():
        wall = f"{min(row['ratios']):.2f}-{max(row['ratios']):.2f}"
        cpu = f"{min(row['cpu ratios']):.2f}-{max(row['cpu ratios']):.2f}"
        print(
            f"  {name:58s} {row['texts/s']:7.1f} x{row['ratio']:.3f} ({wall})"
            f"  {row['texts/cpu-s']:7.1f} x{row['cpu ratio']:.3f} ({cpu})",
            flush=True,
        )


# --- the levers -------------------------------------------------------------------------
def padding_lever(args: argparse.Namespace, inputs: Inputs) -> dict[str, Any]:
    from fnbundle.runtime.batching import run_by_length
    from fnbundle.runtime.tokenizer import pad

    run = runner(session(args.artifact / "model.int8.onnx", args.threads))
    out = {}
    for workload in ("short", "mixed", "128 tokens"):
        variants: dict[str, Work] = {}
        for pass_tokens in (0, 64, 256, 1024):
            batches = inputs.batches(workload)

            def work(batches: Iterator[list[list[int]]] = batches, cost: int = pass_tokens) -> int:
                ids = next(batches)
                run_by_length(
                    ids, [len(x) for x in ids], lambda b: run(pad(b, inputs.pad_id)), cost
                )
                return len(ids)

            name = (
                "one batch" if pass_tokens == 0 else f"length groups, pass = {pass_tokens} tokens"
            )
            variants[name] = work
        out[workload] = interleave(variants, args.rounds, args.duration)
        report(f"padding, batches of {BATCH}, {workload}", out[workload])
    return out


ORT_VARIANTS: dict[str, dict[str, Any]] = {
    "before (intra 2, inter 1, spinning on, sequential, all opts)": {},
    "spinning off": {"spinning": False},
    "parallel execution, inter-op 2": {"execution_mode": "parallel", "inter_op_num_threads": 2},
    "graph optimization: extended": {"graph_optimization_level": "extended"},
    "graph optimization: basic": {"graph_optimization_level": "basic"},
    "intra-op threads 1": {"intra_op_num_threads": 1},
}


def ort_config(raw: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    config = dict(raw)
    if config.get("execution_mode") == "parallel":
        config["execution_mode"] = ort.ExecutionMode.ORT_PARALLEL
    levels = {
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }
    if "graph_optimization_level" in config:
        config["graph_optimization_level"] = levels[config["graph_optimization_level"]]
    return config


def ort_lever(args: argparse.Namespace, inputs: Inputs) -> dict[str, Any]:
    from fnbundle.runtime.tokenizer import pad

    runs = {
        name: runner(session(args.artifact / "model.int8.onnx", args.threads, **ort_config(c)))
        for name, c in ORT_VARIANTS.items()
    }
    out = {}
    for workload, size in (("short", BATCH), ("128 tokens", BATCH), ("short", 1)):
        variants: dict[str, Work] = {}
        for name, run in runs.items():
            batches = inputs.batches(workload)

            def work(
                batches: Iterator[list[list[int]]] = batches, run: Any = run, size: int = size
            ) -> int:
                ids = next(batches)[:size]
                run(pad(ids, inputs.pad_id))
                return len(ids)

            variants[name] = work
        key = f"{workload}, {size} per pass"
        out[key] = interleave(variants, args.rounds, args.duration)
        report(f"ONNX Runtime settings, int8, {key}", out[key])
    return out


def tokenize_lever(args: argparse.Namespace, inputs: Inputs) -> dict[str, Any]:
    """Serial: tokenize a batch, then run it. Overlapped: a thread tokenizes the next
    batch's texts (one request at a time, as request coroutines do) while the model runs."""
    from concurrent.futures import ThreadPoolExecutor

    from fnbundle.runtime.tokenizer import pad, token_ids

    out: dict[str, Any] = {}
    pool = ThreadPoolExecutor(max_workers=1)
    for spinning in (True, False):
        run = runner(session(args.artifact / "model.int8.onnx", args.threads, spinning=spinning))
        for workload, texts in (("short", inputs.short_texts), ("128 tokens", inputs.long_texts)):
            batches = [texts[i : i + BATCH] for i in range(0, len(texts) - BATCH + 1, BATCH)]
            state: dict[str, Any] = {"i": 0}  # the next batch, and its tokenizing future

            def tokenize(batch: list[str]) -> list[list[int]]:
                return [ids for text in batch for ids in token_ids(inputs.tokenizer, [text])]

            def serial(
                run: Any = run, batches: list[list[str]] = batches, state: Any = state
            ) -> int:
                batch = batches[state["i"] % len(batches)]
                state["i"] += 1
                run(pad(tokenize(batch), inputs.pad_id))
                return len(batch)

            def overlapped(
                run: Any = run, batches: list[list[str]] = batches, state: Any = state
            ) -> int:
                if "next" not in state:
                    state["next"] = pool.submit(tokenize, batches[0])
                ids = state["next"].result()
                state["i"] += 1
                state["next"] = pool.submit(tokenize, batches[state["i"] % len(batches)])
                run(pad(ids, inputs.pad_id))
                return len(ids)

            key = f"{workload}, spinning {'on' if spinning else 'off'}"
            out[key] = interleave(
                {"tokenize, then run": serial, "tokenize the next batch while running": overlapped},
                args.rounds,
                args.duration,
            )
            report(f"tokenization, {key}", out[key])
    pool.shutdown()
    out["costs"] = tokenize_costs(args, inputs)
    return out


def tokenize_costs(args: argparse.Namespace, inputs: Inputs) -> dict[str, float]:
    """Microseconds per text: tokenizing, the forward pass in batches of 32, the JSON body."""
    from fnbundle.runtime.tokenizer import pad, token_ids
    from fnbundle.tasks.classify.schema import ClassifyResponse, Prediction

    run = runner(session(args.artifact / "model.int8.onnx", args.threads))
    texts = inputs.short_texts[:BATCH]
    ids = token_ids(inputs.tokenizer, texts)
    prediction = Prediction(label="positive", score=0.9, scores={"negative": 0.1, "positive": 0.9})
    body = ClassifyResponse(model="sentiment-x", backend="onnx-int8", predictions=[prediction])
    jobs: dict[str, Callable[[], Any]] = {
        "tokenize one text": lambda: token_ids(inputs.tokenizer, [texts[0]]),
        "forward pass per text (batch of 32 short)": lambda: run(pad(ids, inputs.pad_id)),
        "JSON body of a one-text answer (pydantic, as FastAPI sends it)": body.model_dump_json,
        "JSON body with the json module": lambda: json.dumps(body.model_dump()),
    }
    per = {"forward pass per text (batch of 32 short)": BATCH}
    costs = {}
    for name, job in jobs.items():
        job()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            job()
            runs += 1
        costs[name] = round((time.perf_counter() - start) / runs / per.get(name, 1) * 1e6, 1)
        print(f"  {name:64s} {costs[name]:9.1f} us per text")
    return costs


# --- int8 variants and OpenVINO: speed and parity against PyTorch -------------------------
def unseen_reviews() -> list[str]:
    with (REPO / "data" / "reviews_unseen.csv").open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f) if row["text"].strip()]


class Parity:
    """PyTorch's probabilities on the unseen reviews, and the export's rule against them."""

    def __init__(self, artifact: Path, inputs: Inputs):
        import torch
        from fnbundle.runtime.onnx import softmax
        from fnbundle.runtime.tokenizer import encode
        from transformers import AutoModelForSequenceClassification

        texts = unseen_reviews()
        self.batches = [encode(inputs.tokenizer, texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]  # fmt: skip
        self.model = AutoModelForSequenceClassification.from_pretrained(str(artifact)).eval()
        with torch.inference_mode():
            self.reference = np.concatenate(
                [
                    softmax(self.model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy())
                    for b in self.batches
                ]
            )  # fmt: skip

    def check(
        self, run: Callable[[dict[str, np.ndarray]], np.ndarray], rule: str
    ) -> dict[str, Any]:
        from fnbundle.runtime.onnx import softmax
        from fnbundle.training.export import parity

        probs = np.concatenate([softmax(np.asarray(run(b), np.float32)) for b in self.batches])
        record = parity(self.reference, probs, rule)
        return {k: record[k] for k in ("agreement", "mean_prob_diff", "max_prob_diff", "passed")}


def int8_graphs(
    args: argparse.Namespace, inputs: Inputs, parity: Parity, work: Path
) -> dict[str, Path]:
    import onnx
    from fnbundle.runtime.tokenizer import encode
    from fnbundle.training.export import export_onnx, quantize_int8
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    plain = work / "plain.onnx"
    sample = encode(inputs.tokenizer, ["a short sample", "a somewhat longer sample for tracing"])
    export_onnx(parity.model, sample, plain)
    train = [t for t in short_reviews() if t not in set(unseen_reviews())][:400]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                encode(inputs.tokenizer, train[i : i + 8]) for i in range(0, len(train), 8)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    graphs = {"shipped: dynamic int8, fused graph": args.artifact / "model.int8.onnx"}
    graphs["dynamic int8, plain graph"] = work / "dynamic-plain.onnx"
    quantize_int8(plain, graphs["dynamic int8, plain graph"])
    for source_name, source in (("fused", args.artifact / "model.onnx"), ("plain", plain)):
        for fmt_name, fmt in (("QDQ", QuantFormat.QDQ), ("QOperator", QuantFormat.QOperator)):
            name = f"static int8 {fmt_name}, {source_name} graph, MinMax on 400 reviews"
            graphs[name] = work / f"static-{source_name}-{fmt_name}.onnx"
            try:
                quantize_static(
                    str(source), str(graphs[name]), Reader(), quant_format=fmt,
                    per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )  # fmt: skip
            except Exception as exc:  # a format the graph's ops do not take: say so
                print(f"  {name}: {type(exc).__name__}: {str(exc)[:120]}")
                del graphs[name]
    return graphs


def speed_and_parity(
    args: argparse.Namespace,
    inputs: Inputs,
    parity: Parity,
    runs: dict[str, tuple[Callable[[dict[str, np.ndarray]], np.ndarray], str]],
    title: str,
) -> dict[str, Any]:
    from fnbundle.runtime.tokenizer import pad

    out: dict[str, Any] = {"parity": {}}
    for name, (run, rule) in runs.items():
        out["parity"][name] = parity.check(run, rule)
        print(f"  {name}: parity {out['parity'][name]}", flush=True)
    for workload in ("short", "128 tokens"):
        variants: dict[str, Work] = {}
        for name, (run, _) in runs.items():
            batches = inputs.batches(workload)

            def work(batches: Iterator[list[list[int]]] = batches, run: Any = run) -> int:
                ids = next(batches)
                run(pad(ids, inputs.pad_id))
                return len(ids)

            variants[name] = work
        out[workload] = interleave(variants, args.rounds, args.duration)
        report(f"{title}, batches of {BATCH}, {workload}", out[workload])
    return out


def int8_lever(args: argparse.Namespace, inputs: Inputs, parity: Parity) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fnb-levers-") as tmp:
        graphs = int8_graphs(args, inputs, parity, Path(tmp))
        runs = {
            name: (runner(session(path, args.threads)), "onnx-int8")
            for name, path in graphs.items()
        }
        return speed_and_parity(args, inputs, parity, runs, "int8 variants")


def openvino_lever(args: argparse.Namespace, inputs: Inputs, parity: Parity) -> dict[str, Any]:
    if args.openvino_path:
        sys.path.insert(0, str(args.openvino_path))
    try:
        import openvino as ov
    except ImportError as exc:
        print(f"\nOpenVINO: not importable ({exc})")
        return {"error": str(exc)}

    core = ov.Core()
    runs: dict[str, tuple[Callable[[dict[str, np.ndarray]], np.ndarray], str]] = {
        "ONNX Runtime, int8 (served)": (
            runner(session(args.artifact / "model.int8.onnx", args.threads)),
            "onnx-int8",
        )
    }
    lock = threading.Lock()
    for file, rule in (("model.int8.onnx", "onnx-int8"), ("model.onnx", "onnx-fp32")):
        for precision in ("f32", "bf16"):
            name = f"OpenVINO {ov.__version__}, {file}, {precision}"
            try:
                compiled = core.compile_model(
                    str(args.artifact / file),
                    "CPU",
                    {
                        "INFERENCE_NUM_THREADS": args.threads,
                        "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_PRECISION_HINT": precision,
                    },
                )
            except Exception as exc:
                print(f"  {name}: {type(exc).__name__}: {' '.join(str(exc).split())[-300:]}")
                continue
            request = compiled.create_infer_request()
            names = {p.get_any_name() for p in compiled.inputs}

            def run(
                feed: dict[str, np.ndarray], request: Any = request, names: set[str] = names
            ) -> np.ndarray:
                with lock:
                    result = request.infer({k: v for k, v in feed.items() if k in names})
                return np.asarray(result[0])

            runs[name] = (run, rule if precision == "f32" else "onnx-int8")
    return speed_and_parity(args, inputs, parity, runs, "OpenVINO against ONNX Runtime")


# --- through the gateway: servers side by side, interleaved rounds ---------------------
GATEWAY_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {  # name: (tree, extra env)
    "before": ("before", {}),
    "after": ("after", {}),
    "after: length groups off": ("after", {"FNB_BATCH_SPLIT_TOKENS": "0"}),
    "after: spinning on": ("after", {"FNB_ONNX_SPINNING": "on"}),
}
GATEWAY_LOADS = (("short", 32), ("mixed", 32), ("128 tokens", 32), ("short", 1))  # (texts, clients)
EMBED_LOADS = (("short", 32), ("short", 1))  # with --embed-model


def chosen_variants(text: str) -> list[str]:
    """The gateway variants a comma-separated ``--variants`` names, in its order."""
    variants = [v.strip() for v in text.split(",") if v.strip()]
    if set(variants) - set(GATEWAY_VARIANTS) or not variants:
        raise SystemExit(f"--variants: choose from {', '.join(GATEWAY_VARIANTS)}")
    return variants


def gateway_payloads(port: int, route: str, model: str, texts: list[str]) -> list[bytes]:
    """One-text requests of ``route`` (``classify`` or ``embeddings``) for ``model``."""
    from loadgen import request_bytes

    field = "texts" if route == "classify" else "input"
    return [request_bytes(port, f"/v1/{route}", {"model": model, field: [t]}) for t in texts]


def gateway_lever(args: argparse.Namespace, inputs: Inputs) -> dict[str, Any]:
    """Each variant's server answers the same closed-loop load in turn, round after round."""
    import contextlib
    import os

    from loadgen import closed_loop, free_port, request_bytes, server

    if args.before is None or args.store is None:
        raise SystemExit("the gateway lever needs --before <shared/ folder> and --store")
    variants = chosen_variants(args.variants)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    texts = {
        "short": inputs.short_texts,
        "128 tokens": inputs.long_texts,
        "mixed": [
            inputs.long_texts[(i // 4) % len(inputs.long_texts)] if i % 4 == 3 else text
            for i, text in enumerate(inputs.short_texts)
        ],
    }
    loads = [("classify", args.model, load, clients) for load, clients in GATEWAY_LOADS]
    if args.embed_model:
        loads += [("embeddings", args.embed_model, load, n) for load, n in EMBED_LOADS]
    preload = ",".join(filter(None, [args.model, args.embed_model]))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FNB_")}
    rows: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in variants:
            tree, extra = GATEWAY_VARIANTS[name]
            port = free_port()
            env = {
                **base_env,
                "PYTHONPATH": str(trees[tree]),
                "FNB_STORE": str(args.store),
                "FNB_THREADS": str(args.threads),
                "FNB_PRELOAD": preload,
                **extra,
            }
            probe = request_bytes(port, "/v1/classify", {"model": args.model, "texts": ["hi"]})
            command = [sys.executable, "-m", "fnbundle.cli", "serve", "--port", str(port)]
            log = args.out.parent / "logs" / f"levers-{name.replace(' ', '_').replace(',', '')}.log"
            servers[name] = stack.enter_context(server(name, command, env, port, probe, log, 300.0))
        for _ in range(args.rounds):
            for route, model, load, clients in loads:
                key = f"{route}, {load}, {clients} clients"
                for name, srv in servers.items():
                    payloads = gateway_payloads(srv.port, route, model, texts[load])
                    closed_loop(srv.port, payloads, clients, 0.5)  # warm-up, unmeasured
                    result = closed_loop(srv.port, payloads, clients, args.duration)
                    row = rows.setdefault(key, {}).setdefault(name, [])
                    row.append(result.throughput if clients > 1 else result.percentile(50))
    out: dict[str, Any] = {}
    for key, by_name in rows.items():
        first = by_name[variants[0]]
        metric = "texts/s" if not key.endswith(" 1 clients") else "p50 ms"
        out[key] = {}
        print(f"\ngateway, {key} ({metric}; ratio to {variants[0]} per round)", flush=True)
        for name, values in by_name.items():
            ratios = [v / f for v, f in zip(values, first, strict=True)]
            out[key][name] = {
                metric: round(statistics.median(values), 1),
                "ratio": round(statistics.median(ratios), 3),
                "ratios": [round(r, 2) for r in ratios],
            }
            print(
                f"  {name:30s} {statistics.median(values):8.1f} x{statistics.median(ratios):.3f}"
                f" ({min(ratios):.2f}-{max(ratios):.2f})",
                flush=True,
            )
    return out


def main() -> None:
    args = parse_args()
    levers = [lever.strip() for lever in args.levers.split(",") if lever.strip()]
    unknown = set(levers) - set(LEVERS)
    if unknown:
        raise SystemExit(f"unknown levers {sorted(unknown)}; choose from {', '.join(LEVERS)}")
    inputs = Inputs(args.artifact)
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds}
    started = time.perf_counter()
    if "padding" in levers:
        results["padding"] = padding_lever(args, inputs)
    if "ort" in levers:
        results["ort"] = ort_lever(args, inputs)
    if "tokenize" in levers:
        results["tokenize"] = tokenize_lever(args, inputs)
    if "int8" in levers or "openvino" in levers:
        parity = Parity(args.artifact, inputs)
        if "int8" in levers:
            results["int8"] = int8_lever(args, inputs, parity)
        if "openvino" in levers:
            results["openvino"] = openvino_lever(args, inputs, parity)
    if "gateway" in levers:
        results["gateway"] = gateway_lever(args, inputs)
    results["seconds"] = round(time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n{results['seconds']} s; figures in {args.out}")


if __name__ == "__main__":
    main()
