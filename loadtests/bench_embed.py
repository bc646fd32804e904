"""The embeddings benchmark, and 128-token throughput against this CPU's int8 bound.

Systems, side by side in one run:

* E1: a naive FastAPI endpoint calling ``SentenceTransformer.encode`` per request, PyTorch
  fp32 (``loadtests/baseline_st.py``);
* ours: ``fnbundle serve`` answering ``POST /v1/embeddings`` (the embedder's default
  backend: fp32 for MiniLM, whose int8 export fails the parity gate; dynamic batching), the
  same process also serving the classifier;
* E2: an in-process ONNX Runtime session on the embedder's ``model.int8.onnx``, batches of
  32, no HTTP;
* the peers a serious user would pick instead (``loadtests/peers/``, ``make peers``;
  ``--peers`` picks them), on the same fused fp32 graph cut before its pooling, the same
  tokenizer and 2 threads: infinity-emb's server (its ONNX engine), and in process
  fastembed and sentence-transformers' ONNX backend (one text per call at 1 client,
  batches of 32 under load). Each peer's vector of a probe text is checked against the
  gateway's before anything is measured;
* ours-lib: fnbundle's own embedder called in process the same way as those libraries
  (``load_embedder(...).embed(texts)`` in the same kind of worker, ``inprocess_embed.py``),
  so a user who embeds in their own process compares like with like.

Targets: embeddings of short reviews at 32 clients >= 3x E1 and >= 0.8x E2; 128-token
embeddings at 32 clients >= 0.5 of :data:`INT8_BOUND` (MiniLM-L6 int8 at 128 tokens on 2
cores of this CPU class), 128-token classification >= 0.6 of it. Against the best peer of
each round (``peer_report.py``): at 32 clients >= 1.3x its throughput and at 1 client a
p50 no worse than its, on short reviews and on 128-token texts; judged three ways: the
gateway against the served peers, fnbundle in process against the in-process libraries,
and the gateway against every peer (an HTTP round trip against a function call).

Key rule: as in ``bench_classify.py``, every figure is a median over at least 5
interleaved rounds (E1, ours, E2 and the peers for each scenario, in an order turned by
one place each round, then the next round) on the same machine, targets are judged on
ratios of paired measurements, and the report says which targets each round met.

Run: ``make bench-embed`` (= ``.venv/bin/python loadtests/bench_embed.py``); ``--quick``
for a smoke check. Raw numbers go to ``.bench/embed.json``, Markdown next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peer_report
from baseline_onnx import OnnxBatchBaseline
from bench_classify import (
    FNBUNDLE,
    START_TIMEOUT_S,
    add_env_option,
    clean_env,
    console,
    ensure_model,
    machine,
    ours_env,
)
from loadgen import closed_loop, fetch, free_port, request_bytes, server
from peers import catalog
from peers.inprocess import InProcessPeer
from peers.models import embedder_folder
from review_texts import REPO, long_texts, short_reviews

OURS_LIB = peer_report.OURS_IN_PROCESS

INT8_BOUND = peer_report.INT8_ROOFLINE  # sequences/s: MiniLM-L6 int8, 128 tokens, 2 cores
MIN_PEER_COSINE = 0.999  # a peer's probe vector against the gateway's: the same model
LONG_TOKENS = 128  # tokens per long text, [CLS] and [SEP] included
E2_BATCH = 32  # texts per E2 forward pass
PROBE = "A probe."


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    route: str  # /v1/embeddings or /v1/classify
    long: bool  # 128-token texts instead of short reviews
    systems: tuple[str, ...]
    loaded: bool = True  # --clients clients (else 1)
    peers: bool = True  # the embedding peers run it too


EMBED = "/v1/embeddings"
SCENARIOS = (
    Scenario(
        "embed-short-1", "embeddings, short reviews, 1 client", EMBED, False, ("ours",), False
    ),
    Scenario(
        "embed-short-32",
        "embeddings, short reviews, 32 clients",
        EMBED,
        False,
        ("E1", "ours", "E2"),
    ),
    Scenario("embed-long-1", "embeddings, 128 tokens, 1 client", EMBED, True, ("ours",), False),
    Scenario("embed-long-32", "embeddings, 128 tokens, 32 clients", EMBED, True, ("ours", "E2")),
    Scenario(
        "classify-long",
        "classification, 128 tokens, 32 clients",
        "/v1/classify",
        True,
        ("ours",),
        peers=False,
    ),
)
# (name, scenario, baseline: a system or "bound", goal): ours / baseline >= goal
TARGETS = (
    ("embeddings >= 3x E1", "embed-short-32", "E1", 3.0),
    ("embeddings >= 0.8x E2", "embed-short-32", "E2", 0.8),
    ("128-token embeddings >= 0.5 of the int8 bound", "embed-long-32", "bound", 0.5),
    ("128-token classification >= 0.6 of the int8 bound", "classify-long", "bound", 0.6),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Embeddings benchmark: ours vs E1 vs E2, and the bound."
    )
    p.add_argument("--store", type=Path, default=REPO / ".bench" / "store", help="model store")
    p.add_argument("--model", default="minilm", help="embedding model (imported if missing)")
    p.add_argument("--classifier", default="sentiment", help="classifier (trained if missing)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5 for the doc)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every system")
    p.add_argument(
        "--peers",
        help="peers, comma-separated: infinity,fastembed,st-onnx (default: every installed "
        "one; none: no peer)",
    )
    add_env_option(p)
    p.add_argument("--only", nargs="*", help="scenario keys to run (default: all)")
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "embed.json")
    p.add_argument("--quick", action="store_true", help="2 short rounds: a smoke check")
    args = p.parse_args()
    unknown = set(args.only or ()) - {sc.key for sc in SCENARIOS}
    if unknown:
        p.error(f"--only: no scenario {', '.join(sorted(unknown))}")
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 2.0, 0.5
    return args


def ensure_embedder(store: Path, name: str) -> Path:
    """The artifact folder of ``name``, imported from ``builtin:minilm`` if missing."""
    from fnbundle.settings import Settings
    from fnbundle.store import Store
    from fnbundle.tasks.embed.export import import_embedder

    if name not in Store(store).latest_ids():
        console.print(f"[bold]importing builtin:minilm as {name!r}[/] into {store}")
        import_embedder("builtin:minilm", name, Settings(store=store))
    return Store(store).resolve(name).path


def texts_of(tokenizer_file: Path, tokens: int) -> list[str]:
    """Real reviews cut to ``tokens`` tokens (special ones included) for every tokenizer
    here: the embedder truncates at 256, not 128, so the texts themselves are cut."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    out = []
    for text in long_texts(tokenizer_file):
        ids = tokenizer.encode(text).ids[1 : tokens - 1]
        out.append(tokenizer.decode(ids))
    return out


def embed_batches(artifact: Path, threads: int) -> OnnxBatchBaseline:
    """E2: B2's session and loop on the embedder's int8 graph, truncating where the model
    stops (256 tokens for MiniLM). B2 applies a softmax to what the graph returns: on 32
    vectors of 384 numbers that is well under 0.1% of a batch's time."""
    e2 = OnnxBatchBaseline(artifact, threads)
    manifest = json.loads((artifact / "manifest.json").read_text())
    e2.tokenizer.enable_truncation(max_length=int(manifest["max_tokens"]))
    return e2


def body(args: argparse.Namespace, route: str, text: str) -> dict[str, Any]:
    if route == "/v1/classify":
        return {"model": args.classifier, "texts": [text]}
    return {"model": args.model, "input": [text]}


def start(name: str, args: argparse.Namespace, peer_model: Path):  # -> context manager
    port = free_port()
    threads = str(args.threads)
    probe = request_bytes(port, EMBED, body(args, EMBED, PROBE))
    log = args.out.parent / "logs" / f"embed-{name}.log"
    if name in catalog.PEERS:
        peer = catalog.launch(catalog.PEERS[name], peer_model, port, args.threads)
        env = clean_env(**peer.env)
        return server(name, peer.command, env, port, probe, log, START_TIMEOUT_S, peer.cwd)
    if name == "E1":
        from fnbundle.loading import builtin_dir

        command = [sys.executable, str(REPO / "loadtests" / "baseline_st.py")]
        command += ["--model-dir", str(builtin_dir("minilm")), "--port", str(port)]
        command += ["--threads", threads]
        env = clean_env(OMP_NUM_THREADS=threads)
    else:
        command = [*FNBUNDLE, "serve", "--port", str(port)]
        env = clean_env(
            FNB_STORE=str(args.store),
            FNB_THREADS=threads,
            FNB_PRELOAD=f"{args.model},{args.classifier}",
            **ours_env(args.env),
        )
    return server(name, command, env, port, probe, log, START_TIMEOUT_S)


def start_inprocess(name: str, args: argparse.Namespace, peer_model: Path) -> InProcessPeer:
    command = catalog.inprocess_command(catalog.PEERS[name], peer_model, args.threads)
    log = args.out.parent / "logs" / f"embed-{name}.log"
    return InProcessPeer(name, command, clean_env(OMP_NUM_THREADS=str(args.threads)), log)


def start_ours_lib(args: argparse.Namespace, artifact: Path) -> InProcessPeer:
    """fnbundle's embedder in the same kind of worker as the in-process peers, on the
    artifact folder, with the gateway's settings (``--env``) and threads."""
    command = [sys.executable, str(REPO / "loadtests" / "peers" / "inprocess_embed.py")]
    command += ["--library", "fnbundle", "--model-dir", str(artifact)]
    command += ["--threads", str(args.threads)]
    env = clean_env(OMP_NUM_THREADS=str(args.threads), **ours_env(args.env))
    return InProcessPeer(OURS_LIB, command, env, args.out.parent / "logs" / "embed-ours-lib.log")


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def served_vector(port: int, args: argparse.Namespace) -> list[float]:
    answer = fetch(port, request_bytes(port, EMBED, body(args, EMBED, PROBE)))
    if not isinstance(answer, dict):
        raise RuntimeError(f"no embedding of {PROBE!r} from port {port}")
    return list(answer["data"][0]["embedding"])


def check_same_model(ours: list[float], vectors: dict[str, list[float]]) -> dict[str, float]:
    """Every peer's vector of the probe against the gateway's: the same model, or stop."""
    cosines = {name: cosine(ours, v) for name, v in vectors.items()}
    wrong = {name: c for name, c in cosines.items() if c < MIN_PEER_COSINE}
    if wrong:
        raise SystemExit(f"peers disagree with the gateway's vector (cosine): {wrong}")
    return cosines


def measure(srv: Any, sc: Scenario, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    clients = args.clients if sc.loaded else 1
    payloads = [request_bytes(srv.port, sc.route, body(args, sc.route, t)) for t in texts]
    if args.warmup > 0:
        closed_loop(srv.port, payloads, clients, args.warmup)
    r = closed_loop(srv.port, payloads, clients, args.duration)
    return {"throughput": r.throughput, "p50_ms": r.percentile(50), "errors": r.errors}


def measure_inprocess(
    peer: InProcessPeer, sc: Scenario, texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """One text a call at 1 client (its p50 is a request's), --clients texts a call under
    load (its p50 is a batch's, reported apart)."""
    batch = args.clients if sc.loaded else 1
    r = peer.run(texts, batch, args.duration, args.warmup)
    key = "batch_p50_ms" if sc.loaded else "p50_ms"
    return {"throughput": r["throughput"], key: r["p50_ms"]}


def round_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round and target: ours / baseline in that round, and whether it met the goal."""
    out = []
    for rnd in sorted({r["round"] for r in rows}):
        got = {(r["scenario"], r["system"]): r["throughput"] for r in rows if r["round"] == rnd}
        for name, scenario, baseline, goal in TARGETS:
            ours = got.get((scenario, "ours"))
            base = INT8_BOUND if baseline == "bound" else got.get((scenario, baseline))
            if ours is None or not base:
                continue
            ratio = ours / base
            out.append({"round": rnd, "target": name, "ratio": ratio, "met": ratio >= goal})
    return out


def markdown(results: dict[str, Any]) -> str:
    rows, per_round = results["rows"], results["round_ratios"]
    lines = ["| scenario | system | texts/s (median) | p50 ms |", "|---|---|--:|--:|"]
    peers = [s for s in dict.fromkeys(r["system"] for r in rows) if s in catalog.PEERS]
    for sc in SCENARIOS:
        for system in [*sc.systems, *peers, OURS_LIB]:
            mine = [r for r in rows if r["scenario"] == sc.key and r["system"] == system]
            if mine:
                tps = statistics.median(r["throughput"] for r in mine)
                p50 = [r["p50_ms"] for r in mine if "p50_ms" in r]
                batch = [r["batch_p50_ms"] for r in mine if "batch_p50_ms" in r]
                if p50:
                    cell = f"{statistics.median(p50):.1f}"
                elif batch:
                    cell = f"{statistics.median(batch):.1f} per batch of {E2_BATCH}"
                else:
                    cell = f"per batch of {E2_BATCH}"
                lines.append(f"| {sc.title} | {system} | {tps:.1f} | {cell} |")
    rounds = sorted({r["round"] for r in per_round})
    lines += [
        "",
        "| target | " + " | ".join(f"round {r + 1}" for r in rounds) + " | median | met |",
        "|---|" + "--:|" * len(rounds) + "--:|---|",
    ]
    for name, _scenario, _baseline, goal in TARGETS:
        mine = [r for r in per_round if r["target"] == name]
        if not mine:
            continue
        cells = " | ".join(f"{r['ratio']:.2f}{'' if r['met'] else ' (no)'}" for r in mine)
        median = statistics.median(r["ratio"] for r in mine)
        lines.append(f"| {name} | {cells} | {median:.2f} | {'yes' if median >= goal else 'no'} |")
    if results.get("peer_targets"):
        lines += ["", "Against the best peer (ours / best peer in the same round):", ""]
        lines.append(peer_report.markdown(results["peer_targets"]).rstrip("\n"))
        run = {r["scenario"] for r in rows}
        keys = [(sc.key, sc.title) for sc in SCENARIOS if sc.peers and sc.key in run]
        lines += ["", "Each peer apart (median of paired ratios):", ""]
        lines.append(peer_report.per_peer_markdown(rows, keys, peers).rstrip("\n"))
        inprocess = [p for p in peers if not catalog.PEERS[p].served]
        if inprocess and any(r["system"] == OURS_LIB for r in rows):
            lines += ["", "fnbundle in process against the in-process libraries:", ""]
            table = peer_report.per_peer_markdown(rows, keys, inprocess, OURS_LIB)
            lines.append(table.rstrip("\n"))
    return "\n".join(lines) + "\n"


def peer_verdicts(rows: list[dict[str, Any]], peers: list[str]) -> list[dict[str, Any]]:
    """The targets against the best embedding peer of each round (``peer_report``), like
    with like first: the gateway against the served peers, fnbundle in process against the
    in-process libraries; then the gateway against every peer."""
    if not peers:
        return []
    clients = {sc.key: 32 if sc.loaded else 1 for sc in SCENARIOS if sc.peers}
    served = tuple(p for p in peers if catalog.PEERS[p].served)
    inprocess = tuple(p for p in peers if not catalog.PEERS[p].served)
    targets = [
        *peer_report.peer_targets(clients, against=served, label="gateway vs served peers"),
        *peer_report.peer_targets(
            clients, ours=OURS_LIB, against=inprocess, label="in process vs in-process peers"
        ),
        *peer_report.peer_targets(clients, label="gateway vs every peer"),
    ]
    return [v for v in peer_report.judge(rows, targets, peers) if v["rounds"]]


def main() -> None:
    from fnbundle.loading import builtin_dir

    args = parse_args()
    t_start = time.perf_counter()
    embedder = ensure_embedder(args.store, args.model)
    classifier = ensure_model(args.store, args.classifier)
    peers = catalog.pick("embed", args.peers)
    missing = [p.name for p in catalog.PEERS.values() if p.task == "embed" and p not in peers]
    if args.peers is None and missing:
        console.print(f"[yellow]peers not installed (make peers):[/] {', '.join(missing)}")
    peer_model = embedder_folder(embedder, builtin_dir("minilm"), args.out.parent / "peers")
    texts = {False: short_reviews(), True: texts_of(embedder / "tokenizer.json", LONG_TOKENS)}
    e2 = embed_batches(embedder, args.threads)
    info = machine()
    console.print(f"[bold]machine[/] {info}\n[bold]models[/] {embedder}, {classifier}")
    console.print(f"[bold]peers[/] {'; '.join(p.describe() for p in peers) or 'none'}")
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        served = ["E1", "ours", *(p.name for p in peers if p.served)]
        servers = {name: stack.enter_context(start(name, args, peer_model)) for name in served}
        inprocess = {
            p.name: stack.enter_context(start_inprocess(p.name, args, peer_model))
            for p in peers
            if not p.served
        }
        if inprocess:  # fnbundle in process: compared with the libraries like for like
            inprocess[OURS_LIB] = stack.enter_context(start_ours_lib(args, embedder))
        ours_vector = served_vector(servers["ours"].port, args)
        vectors = {p.name: served_vector(servers[p.name].port, args) for p in peers if p.served}
        vectors.update({name: w.probe for name, w in inprocess.items()})
        cosines = check_same_model(ours_vector, vectors)
        console.print(f"[bold]probe cosine to the gateway's vector[/] {cosines}")
        scenarios = [sc for sc in SCENARIOS if not args.only or sc.key in args.only]
        for rnd in range(args.rounds):
            for sc in scenarios:
                names = [*sc.systems, *(p.name for p in peers if sc.peers)]
                names += [OURS_LIB] if sc.peers and OURS_LIB in inprocess else []
                for name in peer_report.round_order(names, rnd):
                    if name == "E2":
                        r = e2.run(texts[sc.long], E2_BATCH, args.duration)
                        m: dict[str, Any] = {"throughput": r.throughput}
                    elif name in inprocess:
                        m = measure_inprocess(inprocess[name], sc, texts[sc.long], args)
                    else:
                        m = measure(servers[name], sc, texts[sc.long], args)
                    rows.append({"round": rnd, "scenario": sc.key, "system": name, **m})
                    console.print(
                        f"round {rnd + 1}/{args.rounds} {sc.key:>14} {name:>9}: "
                        f"{m['throughput']:7.1f} texts/s"
                        + (f", p50 {m['p50_ms']:.1f} ms" if "p50_ms" in m else "")
                        + (f", {m['errors']} errors" if m.get("errors") else "")
                    )
    results = {
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "peers": {p.name: {"version": p.version(), **p.settings} for p in peers},
        "peer_cosines": cosines,
        "int8_bound": INT8_BOUND,
        "elapsed_s": time.perf_counter() - t_start,
        "rows": rows,
        "round_ratios": round_ratios(rows),
        "peer_targets": peer_verdicts(rows, [p.name for p in peers]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    args.out.with_suffix(".md").write_text(md)
    console.print(md)
    console.print(f"raw numbers in {args.out}; took {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
