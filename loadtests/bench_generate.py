"""The generation benchmark: the gateway's CPU engine against a naive ``generate`` endpoint.

Systems, side by side in one run, serving the same model from the same files:

* G1: a naive FastAPI endpoint calling ``model.generate`` once per request, streaming
  through ``TextIteratorStreamer`` (``loadtests/baseline_generate.py``);
* ours: ``fnbundle serve`` answering ``POST /v1/chat/completions`` with the transformers
  engine (one running batch with a shared KV cache; streams join and leave between steps).

The model is a Llama built from a config (``--hidden``, ``--layers``; random weights, the
test tokenizer and chat template: no weights can be downloaded here) and imported into the
benchmark store as a user's model would be. Every request is a streamed chat completion
of a review-sized prompt, greedy (``temperature`` 0), ``--max-tokens`` new tokens, with
``stream_options.include_usage`` so tokens are counted from ``usage``, not guessed.

Target (median of per-round ratios): aggregate completion tokens/s at 8 concurrent
streams >= 3x G1. Reported beside it: time to first token (p50, p95) and tokens/s per
stream, at 8 streams and at 1. On a GPU machine, ``--streams 64`` with a real model folder
measures vLLM (the gateway's engine there) against the same naive endpoint.

Key rule: as in ``bench_classify.py``, rounds interleave the systems (G1 then ours for
each scenario, then the next round) on the same machine, and targets are judged on ratios
of paired measurements.

Run: ``make bench-generate`` (= ``.venv/bin/python loadtests/bench_generate.py``);
``--quick`` for a smoke check. Raw numbers go to ``.bench/generate.json``, Markdown next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_classify import FNBUNDLE, START_TIMEOUT_S, clean_env, console, machine
from loadgen import free_port, request_bytes, server
from review_texts import REPO, short_reviews

sys.path.insert(0, str(REPO))  # tests/tiny_llm.py builds the model from a config

MODEL = "bench-llm"
GOAL = 3.0  # ours / G1, aggregate tokens/s at the many-streams scenario


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    clients: int


def scenarios(streams: int) -> tuple[Scenario, ...]:
    """The many-streams scenario (``--streams``: 8 on CPU, 64 against vLLM on a GPU) and one."""
    return (
        Scenario(f"streams-{streams}", f"{streams} concurrent streams", streams),
        Scenario("streams-1", "1 stream", 1),
    )


def target(streams: int) -> tuple[str, str, float]:
    """(name, scenario, goal) of the target the report judges."""
    return (f"aggregate tokens/s at {streams} streams >= {GOAL:g}x G1", f"streams-{streams}", GOAL)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generation benchmark: ours vs a naive endpoint.")
    p.add_argument("--store", type=Path, default=REPO / ".bench" / "store", help="model store")
    p.add_argument("--model-dir", type=Path, help="a Hugging Face model folder to serve instead")
    p.add_argument("--hidden", type=int, default=512, help="the benchmark Llama's width")
    p.add_argument("--layers", type=int, default=8, help="the benchmark Llama's depth")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams, many-streams run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5 for the doc)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every system")
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "generate.json")
    p.add_argument("--quick", action="store_true", help="2 short rounds: a smoke check")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 8.0, 1.0
    return args


def ensure_model(args: argparse.Namespace) -> Path:
    """The benchmark model's folder (built from a config once), imported into the store."""
    from fnbundle.settings import Settings
    from fnbundle.store import Store
    from fnbundle.tasks import REGISTRY

    from tests.tiny_llm import build_tiny_llama

    name = f"{MODEL}-{args.hidden}x{args.layers}"
    folder = args.model_dir or args.store.parent / "bases" / name
    if args.model_dir is None and not (folder / "model.safetensors").is_file():
        console.print(f"[bold]building {name}[/] (random weights from a config) in {folder}")
        build_tiny_llama(folder, hidden=args.hidden, layers=args.layers)
    if MODEL not in Store(args.store).latest_ids() or (
        Store(args.store).resolve(MODEL).manifest.get("source") != str(folder)
    ):
        console.print(f"[bold]importing {folder} as {MODEL!r}[/] into {args.store}")
        settings = Settings(store=args.store, data_roots=[folder.parent])
        REGISTRY.serving_task("generate").import_base(str(folder), MODEL, settings)
    return folder


def chat_body(text: str, args: argparse.Namespace, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Summarise this review: {text}"}],
        "max_tokens": args.max_tokens if stream else 1,
        "temperature": 0,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def start(name: str, args: argparse.Namespace, folder: Path):  # -> context manager
    port = free_port()
    threads = str(args.threads)
    if name == "G1":
        command = [sys.executable, str(REPO / "loadtests" / "baseline_generate.py")]
        command += ["--model-dir", str(folder), "--port", str(port), "--threads", threads]
        command += ["--device", "auto"]  # a GPU when the machine has one, as ours
        env = clean_env(OMP_NUM_THREADS=threads)
    else:
        command = [*FNBUNDLE, "serve", "--port", str(port)]
        env = clean_env(FNB_STORE=str(args.store), FNB_THREADS=threads, FNB_PRELOAD=MODEL)
    probe = request_bytes(port, "/v1/chat/completions", chat_body("A probe.", args, stream=False))
    log = args.out.parent / "logs" / f"generate-{name}.log"
    return server(name, command, env, port, probe, log, START_TIMEOUT_S)


@dataclass
class StreamStats:
    requests: int = 0
    errors: int = 0
    tokens: int = 0  # completion tokens, from usage
    ttft_ms: list[float] = field(default_factory=list)
    per_stream_tps: list[float] = field(default_factory=list)  # tokens/s after the first


async def _one(client: httpx.AsyncClient, body: dict[str, Any], out: StreamStats) -> None:
    t0 = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            out.errors += 1
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = chunk.get("choices") or []
            if first is None and choices and choices[0].get("delta", {}).get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    if usage is None or first is None:
        out.errors += 1
        return
    out.requests += 1
    out.tokens += int(usage["completion_tokens"])
    out.ttft_ms.append((first - t0) * 1000)
    if usage["completion_tokens"] > 1 and end > first:
        out.per_stream_tps.append((usage["completion_tokens"] - 1) / (end - first))


async def _load(port: int, bodies: list[dict[str, Any]], clients: int, duration_s: float):
    out = StreamStats()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=600
    ) as client:
        t0 = time.perf_counter()
        deadline = t0 + duration_s

        async def loop(c: int) -> None:
            i = c * 7
            while time.perf_counter() < deadline:
                await _one(client, bodies[i % len(bodies)], out)
                i += 1

        await asyncio.gather(*(loop(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return out, wall


def measure(port: int, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    bodies = [chat_body(t, args) for t in short_reviews()[:200]]
    if args.warmup > 0:
        asyncio.run(_load(port, bodies, clients, args.warmup))
    stats, wall = asyncio.run(_load(port, bodies, clients, args.duration))

    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    return {
        "tokens_per_s": stats.tokens / wall,
        "requests": stats.requests,
        "errors": stats.errors,
        "ttft_p50_ms": pct(stats.ttft_ms, 50),
        "ttft_p95_ms": pct(stats.ttft_ms, 95),
        "stream_tps_p50": pct(stats.per_stream_tps, 50),
    }


def round_ratios(rows: list[dict[str, Any]], streams: int) -> list[dict[str, Any]]:
    name, scenario, goal = target(streams)
    out = []
    for rnd in sorted({r["round"] for r in rows}):
        got = {r["system"]: r["tokens_per_s"] for r in rows
               if r["round"] == rnd and r["scenario"] == scenario}  # fmt: skip
        if got.get("G1") and "ours" in got:
            ratio = got["ours"] / got["G1"]
            out.append({"round": rnd, "target": name, "ratio": ratio, "met": ratio >= goal})
    return out


def markdown(results: dict[str, Any]) -> str:
    rows, per_round = results["rows"], results["round_ratios"]
    lines = [
        "| scenario | system | tokens/s (all streams) | TTFT p50 ms | TTFT p95 ms | "
        "tokens/s per stream |",
        "|---|---|--:|--:|--:|--:|",
    ]
    streams = int(results["settings"]["streams"])
    for sc in scenarios(streams):
        for system in ("G1", "ours"):
            mine = [r for r in rows if r["scenario"] == sc.key and r["system"] == system]
            if mine:

                def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
                    return statistics.median(r[key] for r in mine)

                lines.append(
                    f"| {sc.title} | {system} | {med('tokens_per_s'):.1f} | "
                    f"{med('ttft_p50_ms'):.0f} | {med('ttft_p95_ms'):.0f} | "
                    f"{med('stream_tps_p50'):.1f} |"
                )
    name, _scenario, goal = target(streams)
    if per_round:
        cells = " | ".join(f"{r['ratio']:.2f}{'' if r['met'] else ' (no)'}" for r in per_round)
        median = statistics.median(r["ratio"] for r in per_round)
        lines += [
            "",
            "| target | "
            + " | ".join(f"round {r['round'] + 1}" for r in per_round)
            + " | median | met |",
            "|---|" + "--:|" * len(per_round) + "--:|---|",
            f"| {name} | {cells} | {median:.2f} | {'yes' if median >= goal else 'no'} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    folder = ensure_model(args)
    info = machine()
    console.print(f"[bold]machine[/] {info}\n[bold]model[/] {folder}")
    rows: list[dict[str, Any]] = []
    with start("G1", args, folder) as g1, start("ours", args, folder) as ours:
        servers = {"G1": g1, "ours": ours}
        for rnd in range(args.rounds):
            for sc in scenarios(args.streams):
                for name, srv in servers.items():
                    m = measure(srv.port, sc.clients, args)
                    rows.append({"round": rnd, "scenario": sc.key, "system": name, **m})
                    console.print(
                        f"round {rnd + 1}/{args.rounds} {sc.key:>10} {name:>4}: "
                        f"{m['tokens_per_s']:7.1f} tokens/s, TTFT p50 {m['ttft_p50_ms']:.0f} ms"
                        + (f", {m['errors']} errors" if m["errors"] else "")
                    )
    results = {
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "elapsed_s": time.perf_counter() - t_start,
        "rows": rows,
        "round_ratios": round_ratios(rows, args.streams),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    args.out.with_suffix(".md").write_text(md)
    console.print(md)
    console.print(f"raw numbers in {args.out}; took {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
