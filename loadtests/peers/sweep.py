"""The short sweep that chose LitServe's and BentoML's batch settings (docs/BENCHMARKS.md).

Each candidate setting of a peer is started once, then measured in interleaved rounds
(every candidate, then the next round) on the scenarios the benchmark judges: short
reviews at 32 clients and at 1 client, 128-token texts at 32 clients. The candidate with
the best median throughput at 32 clients (short and 128-token together, their geometric
mean) is the one :data:`catalog.PEERS` keeps: the targets there are the 1.3x ones, so the
peer is given the settings that serve it best under load.

Key rule: the same model files, threads and load generator as ``bench_classify.py``; a
sweep is a choice among settings, not a figure for the docs' comparison.

Run: ``.venv/bin/python loadtests/peers/sweep.py [--peer litserve] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # loadtests/

from bench_classify import START_TIMEOUT_S, clean_env, console, ensure_model
from loadgen import closed_loop, free_port, request_bytes, server
from peers import catalog
from review_texts import REPO, long_texts, short_reviews

CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "litserve": [
        {"max_batch_size": 64, "batch_timeout": 0.002},
        {"max_batch_size": 32, "batch_timeout": 0.002},
        {"max_batch_size": 64, "batch_timeout": 0.01},
        {"max_batch_size": 64, "batch_timeout": 0.002, "fast_queue": True},
    ],
    "bentoml": [
        {"max_batch_size": 64, "max_latency_ms": 60000},
        {"max_batch_size": 32, "max_latency_ms": 60000},
        {"max_batch_size": 64, "max_latency_ms": 1000},
    ],
}
SCENARIOS = (("short-32", False, 32), ("long-32", True, 32), ("short-1", False, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", choices=sorted(CANDIDATES), action="append")
    p.add_argument("--store", type=Path, default=REPO / ".bench" / "store")
    p.add_argument("--model", default="sentiment")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "peer_sweep.json")
    args = p.parse_args()
    artifact = ensure_model(args.store, args.model)
    texts = {False: short_reviews(), True: long_texts(artifact / "tokenizer.json")}
    body = {"model": args.model, "texts": ["A quick probe review."]}
    rows: list[dict[str, Any]] = []
    for name in args.peer or sorted(CANDIDATES):
        peer = catalog.PEERS[name]
        configs = [replace(peer, settings={**peer.settings, **c}) for c in CANDIDATES[name]]
        with ExitStack() as stack:
            servers = []
            for i, config in enumerate(configs):
                port = free_port()
                launch = catalog.launch(config, artifact, port, args.threads)
                probe = request_bytes(port, launch.route, body)
                log = args.out.parent / "logs" / f"sweep-{name}-{i}.log"
                env = clean_env(**launch.env)
                srv = server(name, launch.command, env, port, probe, log, START_TIMEOUT_S)
                servers.append(stack.enter_context(srv))
            for rnd in range(args.rounds):
                for key, long, clients in SCENARIOS:
                    for i, srv in enumerate(servers):
                        payloads = [
                            request_bytes(srv.port, "/v1/classify", {**body, "texts": [t]})
                            for t in texts[long]
                        ]
                        closed_loop(srv.port, payloads, clients, args.warmup)
                        r = closed_loop(srv.port, payloads, clients, args.duration)
                        row = {"peer": name, "config": i, "round": rnd, "scenario": key}
                        row.update(throughput=r.throughput, p50_ms=r.percentile(50))
                        row["errors"] = r.errors
                        rows.append(row)
                        console.print(
                            f"{name} {configs[i].settings} {key}: {r.throughput:.1f}/s, "
                            f"p50 {r.percentile(50):.1f} ms, {r.errors} errors"
                        )
        loaded_by_config = []
        for i, config in enumerate(configs):
            mine = [r for r in rows if r["peer"] == name and r["config"] == i]

            def med(key: str, metric: str, mine: list = mine) -> float:
                return statistics.median(r[metric] for r in mine if r["scenario"] == key)

            loaded = math.sqrt(med("short-32", "throughput") * med("long-32", "throughput"))
            console.print(
                f"[bold]{name}[/] {config.settings}: short-32 {med('short-32', 'throughput'):.1f}/s"
                f", long-32 {med('long-32', 'throughput'):.1f}/s (geomean {loaded:.1f}), "
                f"short-1 p50 {med('short-1', 'p50_ms'):.1f} ms"
            )
            loaded_by_config.append(loaded)
        best = max(range(len(configs)), key=loaded_by_config.__getitem__)
        console.print(f"[bold]{name}: chosen[/] {configs[best].settings}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
