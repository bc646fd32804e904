"""The peer servers and libraries in the benchmarks: how each starts, what it is sent, and
with which settings.

Classification (``bench_classify.py``): LitServe and BentoML, each serving the classifier's
int8 ONNX export with its own batching. Embeddings (``bench_embed.py``): infinity-emb (a
server, its ONNX engine), fastembed and sentence-transformers' ONNX backend (in process,
``inprocess_embed.py``), all on the peers' copy of the embedder (``models.py``).

Key rules: every peer lives in its own virtualenv ``.peers/<name>`` made by ``make peers``
from ``loadtests/peers/<name>.txt`` (a peer's pins conflict with the project's or with
each other's), and gets the same model files and the same number of threads as the
gateway. A peer's settings are its documented best, chosen by the short sweep recorded in
docs/BENCHMARKS.md (``sweep.py``); :data:`PEERS` holds the chosen values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENVS = REPO / ".peers"


@dataclass(frozen=True)
class Peer:
    name: str
    task: str  # "classify" or "embed"
    served: bool  # an HTTP server (False: a library driven in process)
    package: str  # the distribution whose version the report names
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def venv(self) -> Path:
        return VENVS / self.name

    def installed(self) -> bool:
        """``make peers`` finished for this peer (it writes the marker last)."""
        return (self.venv / ".installed").is_file()

    def version(self) -> str:
        """The installed version of :attr:`package`, from its dist-info folder's name."""
        wanted = re.sub(r"[-_.]+", "_", self.package).lower()
        for info in self.venv.glob("lib/python*/site-packages/*.dist-info"):
            name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
            if re.sub(r"[-_.]+", "_", name).lower() == wanted:
                return version
        return "?"

    def describe(self) -> str:
        """``name version (key=value, ...)``: a peer as the report names it."""
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        where = "" if self.served else "in process, "
        return f"{self.name} {self.version()} ({where}{settings})"


PEERS = {
    p.name: p
    for p in (
        Peer(
            "litserve",
            "classify",
            True,
            "litserve",
            {"max_batch_size": 64, "batch_timeout": 0.002, "fast_queue": True, "workers": 1},
        ),
        Peer(
            "bentoml",
            "classify",
            True,
            "bentoml",
            {"max_batch_size": 32, "max_latency_ms": 60000, "workers": 1},
        ),
        Peer(
            "infinity",
            "embed",
            True,
            "infinity-emb",
            {"engine": "optimum", "batch_size": 32, "pooling": "mean"},
        ),
        Peer("fastembed", "embed", False, "fastembed", {"batch_size": 32}),
        Peer("st-onnx", "embed", False, "sentence-transformers", {"batch_size": 32}),
    )
}


def pick(task: str, names: str | None) -> list[Peer]:
    """The peers ``--peers`` names (comma-separated; ``none``: no peer), else every peer
    of ``task`` that is installed. A named peer must exist, fit the task and be installed."""
    if names is None:
        return [p for p in PEERS.values() if p.task == task and p.installed()]
    chosen = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name == "none":
            continue
        peer = PEERS.get(name)
        if peer is None or peer.task != task:
            mine = ", ".join(p.name for p in PEERS.values() if p.task == task)
            raise SystemExit(f"--peers: {name!r} is not a {task} peer (one of: {mine})")
        if not peer.installed():
            raise SystemExit(f"--peers: {name} is not installed in {peer.venv}: run `make peers`")
        chosen.append(peer)
    return chosen


@dataclass(frozen=True)
class Launch:
    """A served peer's process: command, environment, working folder, route and body."""

    command: list[str]
    env: dict[str, str]
    cwd: Path | None
    route: str
    body_key: str  # the request's list of texts: "texts" or "input"


def launch(peer: Peer, model_dir: Path, port: int, threads: int) -> Launch:
    """How to start ``peer`` on ``port`` serving ``model_dir`` with ``threads`` threads."""
    s, python = peer.settings, str(peer.venv / "bin" / "python")
    threads_env = {"OMP_NUM_THREADS": str(threads)}
    if peer.name == "litserve":
        command = [python, str(HERE / "litserve_classify.py"), "--artifact", str(model_dir)]
        command += ["--port", str(port), "--threads", str(threads)]
        command += ["--max-batch-size", str(s["max_batch_size"])]
        command += ["--batch-timeout", str(s["batch_timeout"])]
        command += ["--fast-queue"] if s.get("fast_queue") else []
        return Launch(command, threads_env, None, "/v1/classify", "texts")
    if peer.name == "bentoml":
        command = [str(peer.venv / "bin" / "bentoml"), "serve", "bentoml_classify:Classifier"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--working-dir", str(HERE)]
        env = {
            **threads_env,
            "PEER_ARTIFACT": str(model_dir),
            "PEER_THREADS": str(threads),
            "PEER_MAX_BATCH_SIZE": str(s["max_batch_size"]),
            "PEER_MAX_LATENCY_MS": str(s["max_latency_ms"]),
            "BENTOML_DO_NOT_TRACK": "True",
        }
        return Launch(command, env, None, "/v1/classify", "texts")
    if peer.name == "infinity":
        # its documented local-model form: `--model-id .` run from the model folder
        command = [str(peer.venv / "bin" / "infinity_emb"), "v2", "--model-id", "."]
        command += ["--engine", s["engine"], "--pooling-method", s["pooling"]]
        command += ["--batch-size", str(s["batch_size"]), "--url-prefix", "/v1"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--no-model-warmup"]
        command += ["--log-level", "warning"]  # no line per request, as for the others
        env = {
            **threads_env,  # its ONNX session takes ONNX Runtime's default: every core (2)
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "HF_HUB_OFFLINE": "1",
            # where it keeps the graph it optimises on its first start: one per model
            "HF_HOME": str(model_dir.parent / f"{model_dir.name}.hf"),
        }
        return Launch(command, env, model_dir, "/v1/embeddings", "input")
    raise ValueError(f"{peer.name} is not a server")


def inprocess_command(peer: Peer, model_dir: Path, threads: int) -> list[str]:
    """The worker that drives an in-process peer over a pipe (``inprocess_embed.py``)."""
    return [
        str(peer.venv / "bin" / "python"),
        str(HERE / "inprocess_embed.py"),
        *("--library", peer.name, "--model-dir", str(model_dir), "--threads", str(threads)),
    ]
