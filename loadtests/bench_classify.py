"""The classification benchmark: the gateway against named baselines and peer servers.

* B1: a naive FastAPI endpoint calling ``transformers.pipeline`` per request, PyTorch fp32
  (``loadtests/baseline_pipeline.py``);
* ours: ``fnbundle serve`` (ONNX Runtime int8, dynamic batching);
* B2: an in-process ONNX Runtime int8 session on batches of 32, no HTTP
  (``loadtests/baseline_onnx.py``);
* the peers a serious user would pick instead, serving the same int8 export with the same
  tokenizer and threads: LitServe and BentoML with their own batching
  (``loadtests/peers/``, installed by ``make peers``; ``--peers`` picks them).

Key rule: every figure is a median over at least 5 interleaved rounds (B1, ours, B2 and
the peers for each scenario, in an order turned by one place each round, then the next
round) on the same machine, and every target is judged on ratios of paired measurements,
because on a shared 2-core machine a ratio holds and an absolute time does not.

Against the peers (``peer_report.py``): at 32 clients >= 1.3x the best peer's throughput,
at 1 client a p50 no worse than the best peer's, on short reviews and on 128-token texts;
128-token throughput at 32 clients >= 0.6 of the int8 roofline. Each round's best peer is
the best in that round; the report gives every round's ratio and verdict.

Run: ``make bench`` (= ``.venv/bin/python loadtests/bench_classify.py``); ``--quick`` for a
smoke check; ``--help`` for the options. Raw numbers go to ``.bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import peer_report
from baseline_onnx import OnnxBatchBaseline
from fnbundle.store import Store
from loadgen import Server, closed_loop, free_port, process_tree, request_bytes, server
from peers import catalog
from review_texts import REPO, long_texts, short_reviews
from rich.console import Console
from rich.table import Table

console = Console()
TRAIN_DATA = REPO / "data" / "reviews.csv"
FNBUNDLE = [sys.executable, "-m", "fnbundle.cli"]
START_TIMEOUT_S = 180.0  # seconds for a server to answer its first prediction on a busy machine
B2_BATCH = 32  # texts per B2 forward pass
BASELINES = ("B1", "ours", "B2")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    clients: int
    long: bool  # 128-token texts instead of short reviews
    b2: bool  # compare with B2 (only where there is a batch to form)


SCENARIOS = (
    Scenario("short-1", "short reviews, 1 client", 1, False, False),
    Scenario("short-32", "short reviews, 32 clients", 32, False, True),
    Scenario("long-1", "128-token texts, 1 client", 1, True, False),
    Scenario("long-32", "128-token texts, 32 clients", 32, True, True),
)
# (name, scenario, metric, ratio of ours to the baseline, target, "ge" | "le")
TARGETS = (
    ("throughput >= 3x B1", "short-32", "throughput", "B1", 3.0, "ge"),
    ("throughput >= 0.8x B2", "short-32", "throughput", "B2", 0.8, "ge"),
    ("p50 latency <= 0.6x B1", "short-1", "p50_ms", "B1", 0.6, "le"),
    ("cold start <= 0.5x B1", "cold", "cold_start_s", "B1", 0.5, "le"),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Classification benchmark: ours vs B1 vs B2.")
    p.add_argument("--store", type=Path, default=REPO / ".bench" / "store", help="model store")
    p.add_argument("--model", default="sentiment", help="store name (trained if missing)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5 for the doc)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    p.add_argument("--cold-starts", type=int, default=None, help="fresh starts each (= rounds)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients under load")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every system")
    p.add_argument("--backend", default="auto", help="ours: FNB_BACKEND (auto = model default)")
    add_env_option(p)
    p.add_argument(
        "--peers",
        help="peer servers, comma-separated: litserve,bentoml (default: every installed "
        "one; none: no peer)",
    )
    p.add_argument("--only", nargs="*", help="scenario keys to run (default: all)")
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "results.json")
    p.add_argument("--quick", action="store_true", help="2 short rounds: a smoke check")
    p.add_argument("--locust", type=float, default=0, help="also run locust headless for N s")
    p.add_argument("--report", type=Path, help="only re-print the tables of a results file")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 2.0, 0.5
    args.cold_starts = args.cold_starts if args.cold_starts is not None else args.rounds
    return args


# --- setup --------------------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's FNB_ settings (no stray API keys or stores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FNB_")}
    env.update(extra)
    return env


def add_env_option(parser: argparse.ArgumentParser) -> None:
    """``--env FNB_KEY=VALUE`` (repeatable): a setting for our gateway only."""
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="FNB_KEY=VALUE",
        help="an FNB_ setting for our gateway (repeatable), e.g. FNB_OPENVINO=off",
    )


def ours_env(pairs: list[str]) -> dict[str, str]:
    """``--env`` pairs as a mapping; only FNB_ settings (the rest of the environment is the
    caller's, for every system alike)."""
    env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    if len(env) != len(pairs) or not all(k.startswith("FNB_") for k in env):
        raise SystemExit(f"--env takes FNB_KEY=VALUE pairs, not {pairs}")
    return env


def ensure_model(store: Path, name: str) -> Path:
    """The artifact folder of ``name``, training the demo model first if it is missing."""
    if name not in Store(store).latest_ids():
        console.print(f"[bold]training {name!r}[/] into {store} (a few minutes on 2 cores)")
        subprocess.run(
            [*FNBUNDLE, "train", "classifier", "--data", str(TRAIN_DATA), "--name", name],
            env=clean_env(FNB_STORE=str(store)),
            cwd=REPO,
            check=True,
        )
    return Store(store).resolve(name).path


def machine() -> dict[str, Any]:
    import onnxruntime
    import tokenizers

    flags = ""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "avx2": " avx2" in flags,
        "avx512": " avx512f" in flags,
        "vnni": "vnni" in flags,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and the workers it started (all their
    threads), from /proc."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a worker that ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# --- the systems --------------------------------------------------------------------
class Systems:
    """Commands and environments for B1, ours and the peers, each on a fresh port."""

    def __init__(self, args: argparse.Namespace, artifact: Path, peers: list[catalog.Peer]):
        self.args, self.artifact = args, artifact
        self.peers = {p.name: p for p in peers}
        self.logs = args.out.parent / "logs"

    def start(self, name: str):  # -> context manager yielding a Server
        port = free_port()
        threads = str(self.args.threads)
        if name in self.peers:
            peer = catalog.launch(self.peers[name], self.artifact, port, self.args.threads)
            probe = request_bytes(port, peer.route, self.body("A quick probe review."))
            log = self.logs / f"peer-{name}.log"
            return server(
                name, peer.command, clean_env(**peer.env), port, probe, log,
                START_TIMEOUT_S, peer.cwd,
            )  # fmt: skip
        if name == "B1":
            command = [sys.executable, str(REPO / "loadtests" / "baseline_pipeline.py")]
            command += ["--model-dir", str(self.artifact), "--port", str(port)]
            command += ["--threads", threads]
            env = clean_env(OMP_NUM_THREADS=threads)
        else:
            command = [*FNBUNDLE, "serve", "--port", str(port)]
            env = clean_env(
                FNB_STORE=str(self.args.store),
                FNB_THREADS=threads,
                FNB_PRELOAD=self.args.model,
                FNB_BACKEND=self.args.backend,
                **ours_env(self.args.env),
            )
        probe = request_bytes(port, "/v1/classify", self.body("A quick probe review."))
        log = self.logs / f"{name}.log"
        return server(name, command, env, port, probe, log, START_TIMEOUT_S)

    def body(self, text: str) -> dict[str, Any]:
        """The gateway's request; the peers read its ``texts`` and ignore ``model``."""
        return {"model": self.args.model, "texts": [text]}


def measure_http(srv: Server, texts: list[str], scenario: Scenario, args, body) -> dict:
    payloads = [request_bytes(srv.port, "/v1/classify", body(t)) for t in texts]
    if args.warmup > 0:
        closed_loop(srv.port, payloads, scenario.clients, args.warmup)
    cpu0 = cpu_seconds(srv.proc.pid)
    r = closed_loop(srv.port, payloads, scenario.clients, args.duration)
    return {
        "throughput": r.throughput,
        "p50_ms": r.percentile(50),
        "p95_ms": r.percentile(95),
        "requests": r.requests,
        "errors": r.errors,
        "client_cpu": r.client_cpu,
        "server_cpu": (cpu_seconds(srv.proc.pid) - cpu0) / r.wall_s,
    }


def measure_b2(b2: OnnxBatchBaseline, texts: list[str], args) -> dict:
    r = b2.run(texts, B2_BATCH, args.duration)
    return {
        "throughput": r.throughput,
        "batch_p50_ms": statistics.median(r.batch_ms),
        "batches": r.batches,
    }


# --- results ------------------------------------------------------------------------
def median_of(rows: list[dict], metric: str) -> float:
    values = [r[metric] for r in rows]
    return statistics.median(values) if values else float("nan")


def paired_ratio(rows: list[dict], scenario: str, metric: str, baseline: str) -> float:
    """Median over rounds of ours / baseline within the same round."""
    by_round: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["scenario"] == scenario and metric in r:
            by_round.setdefault(r["round"], {})[r["system"]] = r[metric]
    ratios = [v["ours"] / v[baseline] for v in by_round.values() if "ours" in v and baseline in v]
    return statistics.median(ratios) if ratios else float("nan")


def systems_of(rows: list[dict]) -> list[str]:
    """Every system measured, in the order of first appearance (B1, ours, B2, peers)."""
    return list(dict.fromkeys(r["system"] for r in rows))


def peers_of(rows: list[dict]) -> list[str]:
    return [s for s in systems_of(rows) if s not in BASELINES]


def peer_verdicts(rows: list[dict], scenarios: list[Scenario]) -> list[dict[str, Any]]:
    """The targets against the best peer (``peer_report``), judged per round."""
    clients = {sc.key: sc.clients for sc in scenarios}
    roofline = "long-32" if "long-32" in clients else None
    targets = peer_report.peer_targets(clients, roofline=roofline)
    peers = peers_of(rows)
    return [
        v
        for v in peer_report.judge(rows, targets, peers)
        if v["rounds"] and (peers or v["scenario"] == roofline)
    ]


def summarize(rows: list[dict], scenarios: list[Scenario]) -> dict[str, Any]:
    summary: dict[str, Any] = {"scenarios": {}, "targets": []}
    for sc in [*scenarios, Scenario("cold", "cold start", 0, False, False)]:
        entry: dict[str, Any] = {}
        for system in systems_of(rows):
            sys_rows = [r for r in rows if r["scenario"] == sc.key and r["system"] == system]
            if sys_rows:
                metrics = [k for k in sys_rows[0] if k not in {"round", "scenario", "system"}]
                entry[system] = {m: median_of(sys_rows, m) for m in metrics}
        if entry:
            summary["scenarios"][sc.key] = entry
    for name, scenario, metric, baseline, target, sense in TARGETS:
        ratio = paired_ratio(rows, scenario, metric, baseline)
        met = ratio >= target if sense == "ge" else ratio <= target
        summary["targets"].append(
            {"target": name, "scenario": scenario, "ratio": ratio, "goal": target, "met": met}
        )
    for sc in scenarios:  # the ratios without targets, reported all the same
        for metric, baseline in (("throughput", "B1"), ("throughput", "B2"), ("p50_ms", "B1")):
            summary["scenarios"].get(sc.key, {}).setdefault("ratios", {})[
                f"{metric} ours/{baseline}"
            ] = paired_ratio(rows, sc.key, metric, baseline)
        for metric in ("throughput", "p50_ms"):
            for peer, ratio in peer_report.per_peer_ratios(
                rows, sc.key, metric, peers_of(rows)
            ).items():
                summary["scenarios"].get(sc.key, {}).setdefault("ratios", {})[
                    f"{metric} ours/{peer}"
                ] = ratio
    summary["peer_targets"] = peer_verdicts(rows, scenarios)
    return summary


def _fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: blank where a figure does not apply (missing or NaN)."""
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def print_tables(summary: dict[str, Any], scenarios: list[Scenario], rounds: int) -> None:
    console.print(", ".join(f"[bold]{sc.key}[/]: {sc.title}" for sc in scenarios))
    table = Table(title=f"medians of {rounds} interleaved rounds (B2: p50 per batch of 32)")
    for col in ("scenario", "system", "texts/s", "p50 ms", "p95 ms", "client CPU", "server CPU"):
        table.add_column(col, justify="left" if col in {"scenario", "system"} else "right")
    for sc in scenarios:
        for system, m in summary["scenarios"].get(sc.key, {}).items():
            if system == "ratios":
                continue
            table.add_row(
                sc.key,
                system,
                _fmt(m["throughput"]),
                _fmt(m.get("p50_ms", m.get("batch_p50_ms"))),
                _fmt(m.get("p95_ms")),
                _fmt(m.get("client_cpu"), 2),
                _fmt(m.get("server_cpu"), 2),
            )
    for system, m in summary["scenarios"].get("cold", {}).items():
        table.add_row("cold start", system, "", f"{m['cold_start_s']:.2f} s", "", "", "")
    console.print(table)

    ratios = Table(title="ratios: median over rounds of ours / baseline in the same round")
    keys = ("throughput ours/B1", "throughput ours/B2", "p50_ms ours/B1")
    for col in ("scenario", "texts/s vs B1", "texts/s vs B2", "p50 vs B1"):
        ratios.add_column(col, justify="left" if col == "scenario" else "right")
    for sc in scenarios:
        r = summary["scenarios"].get(sc.key, {}).get("ratios", {})
        ratios.add_row(sc.key, *(_fmt(r.get(k), 2) for k in keys))
    console.print(ratios)

    targets = Table(title="targets")
    for col in ("target", "scenario", "ratio", "met"):
        targets.add_column(col)
    for t in summary["targets"]:
        met = "[green]yes" if t["met"] else "[red]no"
        targets.add_row(t["target"], t["scenario"], f"{t['ratio']:.2f}", met)
    console.print(targets)
    print_peer_verdicts(summary.get("peer_targets", []))


def print_peer_verdicts(verdicts: list[dict[str, Any]]) -> None:
    """Ours / the best peer of each round (or the roofline), per round, median, verdict."""
    if not verdicts:
        return
    table = Table(title="against the best peer: ours / best peer in the same round")
    rounds = sorted({r["round"] for v in verdicts for r in v["rounds"]})
    for col in ("target", *(f"round {r + 1}" for r in rounds), "median", "met"):
        table.add_column(col, justify="left" if col in {"target", "met"} else "right")
    for v in verdicts:
        cells = {r["round"]: r for r in v["rounds"]}
        row = [
            f"{cells[r]['ratio']:.2f} {cells[r]['best']}" + ("" if cells[r]["met"] else " [red]no")
            if r in cells
            else ""
            for r in rounds
        ]
        met = "[green]yes" if v["met"] else "[red]no"
        rounds_met = f" ({v['rounds_met']}/{len(v['rounds'])} rounds)"
        table.add_row(v["target"], *row, _fmt(v["median"], 2), met + rounds_met)
    console.print(table)


# --- the run ------------------------------------------------------------------------
def run_locust(srv: Server, args: argparse.Namespace) -> None:
    """The locustfile, headless, against the running gateway (a subprocess: locust
    monkey-patches sockets and must not be imported here)."""
    subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py")),
            *("--headless", "-u", str(args.clients), "-r", str(args.clients)),
            *("-t", f"{int(args.locust)}s", "--host", f"http://127.0.0.1:{srv.port}"),
            *("--model", args.model, "--only-summary"),
        ],
        env=clean_env(),
        cwd=REPO,
        timeout=args.locust + 60,  # seconds: locust stops itself; this is the backstop
        check=False,
    )


def markdown(summary: dict[str, Any], scenarios: list[Scenario]) -> str:
    """The same tables as Markdown, for docs/BENCHMARKS.md."""
    lines = [
        "| scenario | system | texts/s | p50 ms | p95 ms | ours/B1 texts/s | ours/B2 texts/s | ours/B1 p50 |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for sc in scenarios:
        entry = summary["scenarios"].get(sc.key, {})
        r = entry.get("ratios", {})
        for system in [k for k in entry if k != "ratios"]:
            m = entry[system]
            p50 = m.get("p50_ms", m.get("batch_p50_ms"))
            ratio_cells = ["", "", ""]
            if system == "ours":
                ratio_cells = [
                    _fmt(r.get(k), 2)
                    for k in ("throughput ours/B1", "throughput ours/B2", "p50_ms ours/B1")
                ]
            lines.append(
                f"| {sc.title} | {system} | {_fmt(m['throughput'])} | "
                f"{_fmt(p50)}{' per batch' if system == 'B2' else ''} | {_fmt(m.get('p95_ms'))} | "
                + " | ".join(ratio_cells)
                + " |"
            )
    cold = summary["scenarios"].get("cold", {})
    if cold:
        lines += ["", "| cold start (process start to first prediction) | median s |", "|---|--:|"]
        lines += [f"| {system} | {m['cold_start_s']:.2f} |" for system, m in cold.items()]
    lines += ["", "| target | ratio | met |", "|---|--:|---|"]
    lines += [
        f"| {t['target']} ({t['scenario']}) | {t['ratio']:.2f} | {'yes' if t['met'] else 'no'} |"
        for t in summary["targets"]
    ]
    if summary.get("peer_targets"):
        lines += ["", "Against the best peer (ours / best peer in the same round):", ""]
        lines.append(peer_report.markdown(summary["peer_targets"]).rstrip("\n"))
    return "\n".join(lines) + "\n"


def peers_markdown(rows: list[dict], scenarios: list[Scenario]) -> str:
    """Ours against each peer apart: median paired ratios per scenario."""
    keys = [(sc.key, sc.title) for sc in scenarios]
    return peer_report.per_peer_markdown(rows, keys, peers_of(rows))


def report(results: dict[str, Any], out: Path) -> None:
    """Medians, ratios and targets from raw rows: printed, and written next to ``out``."""
    keys = {r["scenario"] for r in results["rows"]}
    scenarios = [s for s in SCENARIOS if s.key in keys]
    summary = summarize(results["rows"], scenarios)
    results["summary"] = summary
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(summary, scenarios, results["settings"]["rounds"])
    md = out.with_suffix(".md")
    per_peer = peers_markdown(results["rows"], scenarios)
    md.write_text(
        markdown(summary, scenarios) + (f"\nEach peer apart:\n\n{per_peer}" if per_peer else "")
    )
    console.print(f"raw numbers in {out}, Markdown tables in {md}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    scenarios = [
        replace(s, clients=args.clients) if s.clients > 1 else s
        for s in SCENARIOS
        if not args.only or s.key in args.only
    ]
    artifact = ensure_model(args.store, args.model)
    peers = catalog.pick("classify", args.peers)
    missing = [p.name for p in catalog.PEERS.values() if p.task == "classify" and p not in peers]
    if args.peers is None and missing:
        console.print(f"[yellow]peers not installed (make peers):[/] {', '.join(missing)}")
    systems = Systems(args, artifact, peers)
    texts = {False: short_reviews(), True: long_texts(artifact / "tokenizer.json")}
    b2 = OnnxBatchBaseline(artifact, args.threads)
    info = machine()
    console.print(f"[bold]machine[/] {info}")
    console.print(f"[bold]artifact[/] {artifact}")
    console.print(f"[bold]peers[/] {'; '.join(p.describe() for p in peers) or 'none'}")
    rows: list[dict[str, Any]] = []

    for i in range(args.cold_starts):  # B1 then ours, each a fresh process
        for name in ("B1", "ours"):
            with systems.start(name) as srv:
                cold = srv.cold_start_s
            rows.append({"round": i, "scenario": "cold", "system": name, "cold_start_s": cold})
            console.print(f"cold start {i + 1}/{args.cold_starts} {name}: {cold:.2f} s")

    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(systems.start(name))
            for name in ("B1", "ours", *(p.name for p in peers))
        }
        ours_srv = servers["ours"]
        backends = {name: srv.backend for name, srv in servers.items()}
        console.print(f"[bold]backends[/] {backends}")
        for rnd in range(args.rounds):
            for sc in scenarios:
                names = ["B1", "ours", "B2", *(p.name for p in peers)]
                for name in peer_report.round_order(names, rnd):
                    if name == "B2":
                        if not sc.b2:
                            continue
                        m = measure_b2(b2, texts[sc.long], args)
                    else:
                        m = measure_http(servers[name], texts[sc.long], sc, args, systems.body)
                    rows.append({"round": rnd, "scenario": sc.key, "system": name, **m})
                    console.print(
                        f"round {rnd + 1}/{args.rounds} {sc.key:>8} {name:>8}: "
                        f"{m['throughput']:7.1f} texts/s"
                        + (f", p50 {m['p50_ms']:.1f} ms" if "p50_ms" in m else "")
                        + (f", {m['errors']} errors" if m.get("errors") else "")
                    )
        if args.locust:
            run_locust(ours_srv, args)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "backends": backends,
        "peers": {p.name: {"version": p.version(), **p.settings} for p in peers},
        "settings": settings,
        "elapsed_s": time.perf_counter() - t_start,
        "rows": rows,
    }


def main() -> None:
    args = parse_args()
    if args.report:
        report(json.loads(args.report.read_text()), args.report)
        return
    results = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report(results, args.out)
    console.print(f"took {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
