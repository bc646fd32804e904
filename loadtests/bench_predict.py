"""The tabular benchmark: one row at a time in process, and ``/v1/predict`` under load.

Systems, side by side in one run, on the demo table's model (``data/churn.csv``, the model
a compare run picks, trained into the benchmark store if missing):

* in process, one row per call: the published ONNX graph (ONNX Runtime, after the shared
  row encoding) against the same scikit-learn pipeline's ``predict_proba`` on a one-row
  DataFrame of the same encoding; p50 over interleaved rounds;
* over HTTP at 32 clients with one row per request: ``fnbundle serve`` (``POST
  /v1/predict``, dynamic batching) against P1, a naive FastAPI endpoint calling the
  pipeline per request (``loadtests/baseline_sklearn.py``).

Targets: single-row latency <= 0.3x the pipeline's; throughput at 32 clients >= 2x P1.
Medians of paired per-round ratios over at least 5 interleaved rounds, as the other
benchmarks.

Run: ``.venv/bin/python loadtests/bench_predict.py``; ``--quick`` for a smoke check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from bench_classify import FNBUNDLE, START_TIMEOUT_S, clean_env, console, machine
from loadgen import closed_loop, free_port, request_bytes, server
from review_texts import REPO

DATA = REPO / "data" / "churn.csv"
TARGETS = (
    ("single-row latency <= 0.3x the pipeline", "latency", 0.3),
    ("32 clients >= 2x P1", "http", 2.0),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Tabular predictions: ONNX vs the pipeline.")
    p.add_argument("--store", type=Path, default=REPO / ".bench" / "store")
    p.add_argument("--name", default="churn")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per HTTP run")
    p.add_argument("--calls", type=int, default=2000, help="single-row calls per latency run")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 short rounds: a smoke check")
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "predict.json")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.calls = 2, 2.0, 300
    return args


def ensure_model(store: Path, name: str) -> Any:
    from fnbundle.settings import Settings
    from fnbundle.store import Store
    from fnbundle.tasks.train_tabular.params import TrainTabularParams
    from fnbundle.training.tabular import train_tabular

    try:
        return Store(store).resolve(name)
    except Exception:  # not trained yet
        console.print(f"training {name} on {DATA} (compare) into {store}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            settings = Settings(store=store, data_roots=[DATA.parent])
            return train_tabular(TrainTabularParams(data=str(DATA), name=name), settings).artifact


def rows() -> list[dict[str, Any]]:
    import csv

    with DATA.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    return [
        {k: v for k, v in r.items() if k not in ("customer_id", "churned")} for r in table[:500]
    ]


def latency(fn: Any, samples: list[dict[str, Any]], calls: int) -> float:
    """p50 milliseconds of ``fn(row)`` over ``calls`` rows."""
    times = []
    for i in range(calls):
        row = samples[i % len(samples)]
        t0 = time.perf_counter()
        fn(row)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    import onnxruntime as ort
    import pandas as pd
    from baseline_sklearn import fitted

    artifact = ensure_model(args.store, args.name)
    model = artifact.manifest["model"]
    pipe, spec, _ = fitted(DATA, model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(
        str(artifact.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    samples = rows()

    def ours(row: dict[str, Any]) -> Any:
        return session.run(None, spec.encode([row]))

    def theirs(row: dict[str, Any]) -> Any:
        encoded = spec.encode([row])
        return pipe.predict_proba(pd.DataFrame({k: v.ravel() for k, v in encoded.items()}))

    info = machine()
    console.print(f"[bold]machine[/] {info}\n[bold]model[/] {artifact.id} ({model})")
    out: list[dict[str, Any]] = []
    port_ours, port_p1 = free_port(), free_port()
    probe = {"model": args.name, "rows": [samples[0]]}
    ours_cmd = [*FNBUNDLE, "serve", "--port", str(port_ours)]
    ours_env = clean_env(
        FNB_STORE=str(args.store), FNB_THREADS=str(args.threads), FNB_PRELOAD=args.name
    )
    p1_cmd = [sys.executable, str(REPO / "loadtests" / "baseline_sklearn.py"), "--data", str(DATA)]
    p1_cmd += ["--model", model, "--port", str(port_p1), "--threads", str(args.threads)]
    logs = args.out.parent / "logs"
    with (
        server("ours", ours_cmd, ours_env, port_ours, request_bytes(port_ours, "/v1/predict", probe), logs / "predict-ours.log", START_TIMEOUT_S) as srv_ours,
        server("P1", p1_cmd, clean_env(OMP_NUM_THREADS=str(args.threads)), port_p1, request_bytes(port_p1, "/v1/predict", probe), logs / "predict-p1.log", START_TIMEOUT_S) as srv_p1,
    ):  # fmt: skip
        for rnd in range(args.rounds):
            mine, pipeline_ms = (
                latency(ours, samples, args.calls),
                latency(theirs, samples, args.calls),
            )
            out.append(
                {
                    "round": rnd,
                    "scenario": "latency",
                    "ours_ms": mine,
                    "pipeline_ms": pipeline_ms,
                    "ratio": mine / pipeline_ms,
                }
            )
            got = {}
            for name, srv in (("P1", srv_p1), ("ours", srv_ours)):
                payloads = [
                    request_bytes(srv.port, "/v1/predict", {"model": args.name, "rows": [r]})
                    for r in samples
                ]
                closed_loop(srv.port, payloads, args.clients, 1.0)  # warm-up
                r = closed_loop(srv.port, payloads, args.clients, args.duration)
                got[name] = {
                    "throughput": r.throughput,
                    "p50_ms": r.percentile(50),
                    "errors": r.errors,
                }
            out.append(
                {
                    "round": rnd,
                    "scenario": "http",
                    **{f"{k}_{m}": v for k, d in got.items() for m, v in d.items()},
                    "ratio": got["ours"]["throughput"] / got["P1"]["throughput"],
                }
            )
            console.print(
                f"round {rnd + 1}/{args.rounds}: single row {mine:.3f} ms vs {pipeline_ms:.3f} ms "
                f"({mine / pipeline_ms:.2f}x); 32 clients {got['ours']['throughput']:.0f} vs "
                f"{got['P1']['throughput']:.0f} rows/s ({got['ours']['throughput'] / got['P1']['throughput']:.2f}x)"
            )  # fmt: skip
    lines = [
        "| target | "
        + " | ".join(f"round {r + 1}" for r in range(args.rounds))
        + " | median | met |",
        "|---|" + "--:|" * args.rounds + "--:|---|",
    ]
    for title, scenario, goal in TARGETS:
        ratios = [r["ratio"] for r in out if r["scenario"] == scenario]
        median = statistics.median(ratios)
        met = median <= goal if scenario == "latency" else median >= goal
        lines.append(
            f"| {title} | "
            + " | ".join(f"{x:.2f}" for x in ratios)
            + f" | {median:.2f} | {'yes' if met else 'no'} |"
        )
    md = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": info, "model": artifact.id, "rows": out}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text(md)
    console.print(md)


if __name__ == "__main__":
    main()
