"""Which backend serves a classify or embed model, with OpenVINO installed: the CPU check,
``auto``'s choice on CPUs with and without AMX (a fake ``/proc/cpuinfo``), the load-time
gate and its fallbacks, explicit ``openvino-bf16`` requests, and ``FNB_OPENVINO=off``.

The tiny graphs (a word-vector mean, a masked sum) run exactly in bf16, so the real gate
passes them; a gate that fails is a rule forced to fail, or an fp32 graph OpenVINO cannot
read."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.errors import InvalidRequest
from fnbundle.loading import load_model
from fnbundle.runtime import openvino
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store
from fnbundle.tasks import REGISTRY
from fnbundle.tasks.classify.model import TextClassifier

from tests.conftest import REPO
from tests.unit.tiny_onnx import _onnx_model, _tokenizer_json, publish_tiny, publish_tiny_embedder

pytestmark = pytest.mark.unit

CLASSIFY = REGISTRY.serving_task("classify")
EMBED = REGISTRY.serving_task("embed")
AMX_FLAGS = "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
NO_AMX_FLAGS = "fpu avx2 avx512f avx512_bf16"  # AVX-512 BF16 alone is not enough


def fake_cpu(folder: Path, flags: str) -> Path:
    path = folder / f"cpuinfo-{len(flags)}"
    path.write_text(f"processor\t: 0\nmodel name\t: fake\nflags\t\t: {flags}\n\n", "utf-8")
    return path


@pytest.fixture
def amx(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(openvino, "CPUINFO", fake_cpu(tmp_path, AMX_FLAGS))


@pytest.fixture
def no_amx(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(openvino, "CPUINFO", fake_cpu(tmp_path, NO_AMX_FLAGS))


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path / "store")
    publish_tiny(store, "tiny")
    publish_tiny_embedder(store, "tiny-embed")
    return store


def settings_for(store: Store, **extra) -> Settings:
    return Settings(store=store.root, threads=1, **extra)


def publish_int8_default(store: Store, name: str, fp32: bytes, int8: bytes) -> Artifact:
    """A classifier with both graphs as published (hashes matching), the int8 one its
    default."""
    with store.staging(name) as staged:
        (staged / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
        (staged / "model.onnx").write_bytes(fp32)
        (staged / "model.int8.onnx").write_bytes(int8)
        return store.publish(
            staged,
            {
                "name": name,
                "task": "classify",
                "labels": ["negative", "positive"],
                "tokenizer": {"max_length": 32, "pad_token_id": 0, "pad_token": "[PAD]"},
                "backends": ["onnx-fp32", "onnx-int8"],
                "default_backend": "onnx-int8",
            },
        )


def publish_int8_only_openvino_unreadable(store: Store) -> Artifact:
    """A classifier whose int8 graph is its default and whose fp32 graph OpenVINO cannot
    read (ONNX Runtime never opens it under ``auto``)."""
    return publish_int8_default(store, "unreadable", b"not an onnx graph", _onnx_model(2))


def publish_int8_default_far_from_fp32(store: Store) -> Artifact:
    """A classifier whose int8 default drifts far from its fp32 graph on sentiment words
    (as a real int8 export can on texts unlike its parity set)."""
    return publish_int8_default(store, "drifted", _onnx_model(2), _onnx_model(2, weight=-4.0))


# --- the CPU check ----------------------------------------------------------------------


def test_the_cpu_check_reads_amx_bf16_from_the_flags(tmp_path):
    assert openvino.fast_bf16_cpu(fake_cpu(tmp_path, AMX_FLAGS))
    assert not openvino.fast_bf16_cpu(fake_cpu(tmp_path, NO_AMX_FLAGS))
    assert not openvino.fast_bf16_cpu(tmp_path / "missing")  # not Linux: no
    assert openvino.cpu_flags("flags : a amx_bf16 b\nflags : c") == {"a", "amx_bf16", "b"}


# --- auto's choice ------------------------------------------------------------------------


def test_auto_tries_openvino_only_where_the_cpu_has_amx(store, tmp_path, monkeypatch):
    tiny, embed = store.resolve("tiny"), store.resolve("tiny-embed")
    monkeypatch.setattr(openvino, "CPUINFO", fake_cpu(tmp_path, NO_AMX_FLAGS))
    assert CLASSIFY.pick_backend(tiny, "auto") == "onnx-fp32"
    assert EMBED.pick_backend(embed, "auto") == "onnx-fp32"
    monkeypatch.setattr(openvino, "CPUINFO", fake_cpu(tmp_path, AMX_FLAGS))
    assert CLASSIFY.pick_backend(tiny, "auto") == openvino.GATED
    assert EMBED.pick_backend(embed, "auto") == openvino.GATED
    # an explicit ONNX Runtime backend is that backend on any CPU
    assert CLASSIFY.pick_backend(tiny, "onnx-fp32") == "onnx-fp32"


def test_auto_leaves_a_model_whose_default_is_not_onnx_alone(store, amx):
    tiny = store.resolve("tiny")
    torch_default = Artifact(tiny.id, tiny.path, {**tiny.manifest, "default_backend": "torch"})
    assert CLASSIFY.pick_backend(torch_default, "auto") == "onnx-fp32"  # as without OpenVINO
    files = {k: v for k, v in tiny.manifest["files"].items() if k != "model.onnx"}
    no_fp32 = Artifact(tiny.id, tiny.path, {**tiny.manifest, "files": files})
    with pytest.raises(Exception, match="no loadable weights"):
        CLASSIFY.pick_backend(no_fp32, "auto")


@pytest.mark.parametrize(
    ("flags", "served"), [(AMX_FLAGS, "openvino-bf16"), (NO_AMX_FLAGS, "onnx-fp32")]
)
def test_the_gateway_serves_and_lists_the_backend_auto_chose(
    store, tmp_path, monkeypatch, flags, served
):
    monkeypatch.setattr(openvino, "CPUINFO", fake_cpu(tmp_path, flags))
    with TestClient(create_app(settings_for(store, preload=[]), jobs=False)) as client:
        r = client.post("/v1/classify", json={"model": "tiny", "texts": ["great film", "awful"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["backend"] == served
        assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]
        e = client.post("/v1/embeddings", json={"model": "tiny-embed", "input": ["the film"]})
        assert e.status_code == 200, e.text
        for name in ("tiny", "tiny-embed"):
            described = client.get(f"/v1/models/{name}").json()
            assert (described["state"], described["backend"]) == ("ready", served)


# --- the gate -----------------------------------------------------------------------------


def test_a_failed_gate_serves_the_onnx_default_and_logs_why(store, amx, caplog):
    tiny = store.resolve("tiny")
    settings = settings_for(store)

    def failing_rule(reference: np.ndarray, candidate: np.ndarray) -> dict:
        return {"agreement": 0.5, "passed": False, "rules": {"min_agreement": 0.98}}

    with caplog.at_level(logging.WARNING, logger="fnbundle.runtime.openvino"):
        model = openvino.gated_load(
            tiny.id,
            lambda backend: TextClassifier.load(tiny, backend, settings),
            "onnx-fp32",
            lambda m: m.predict_proba(openvino.PROBE_TEXTS),
            failing_rule,
            settings,
        )
    assert model.backend == "onnx-fp32"
    assert model.predict(["great film"])[0]["label"] == "positive"
    (record,) = caplog.records
    assert "serving onnx-fp32, not openvino-bf16" in record.getMessage()
    assert "failed the parity gate" in record.getMessage() and "0.5" in record.getMessage()


def test_the_real_gate_passes_an_exact_graph(store, amx, caplog):
    with caplog.at_level(logging.INFO, logger="fnbundle.runtime.openvino"):
        model = load_model("tiny", settings_for(store), store=store)
    assert model.backend == "openvino-bf16"
    assert "serving openvino-bf16 (parity against onnx-fp32" in caplog.text
    assert model.predict(["love the film", "hate it"])[0]["label"] == "positive"


def test_the_gate_holds_openvino_to_fp32_not_to_the_int8_default(store, amx, caplog):
    # The int8 default is itself an approximation: OpenVINO is judged against ONNX Runtime
    # fp32 on the graph it reads, so int8's own drift does not turn it away.
    drifted = publish_int8_default_far_from_fp32(store)
    settings = settings_for(store)
    int8 = TextClassifier.load(drifted, "onnx-int8", settings).predict_proba(["love it"])
    fp32 = TextClassifier.load(drifted, "onnx-fp32", settings).predict_proba(["love it"])
    assert abs(float(int8[0, 1]) - float(fp32[0, 1])) > 0.1  # far outside the int8 rule
    with caplog.at_level(logging.INFO, logger="fnbundle.runtime.openvino"):
        model = load_model("drifted", settings, store=store)
    assert model.backend == "openvino-bf16"
    assert "serving openvino-bf16 (parity against onnx-fp32" in caplog.text
    # small passes still run on the int8 default
    assert np.allclose(model.predict_proba(["love it"]), int8, atol=1e-6)


def test_an_openvino_error_never_fails_the_load(store, amx, caplog):
    publish_int8_only_openvino_unreadable(store)
    with caplog.at_level(logging.WARNING, logger="fnbundle.runtime.openvino"):
        model = load_model("unreadable", settings_for(store), store=store)
    assert model.backend == "onnx-int8"
    assert model.predict(["good good"])[0]["label"] == "positive"
    assert "serving onnx-int8, not openvino-bf16: OpenVINO failed (" in caplog.text
    assert "loading model.onnx failed" in caplog.text  # what failed, without the folder
    assert str(store.root) not in caplog.text.split("OpenVINO failed (", 1)[1]


def test_small_passes_run_on_onnx_runtime_and_large_ones_on_openvino():
    answered: list[str] = []

    def runner(name: str):
        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            answered.append(name)
            return np.zeros((len(inputs["input_ids"]), 2), dtype=np.float32)

        return run

    run = openvino.by_size(runner("onnx"), runner("openvino"), min_tokens=512, min_row_tokens=64)
    for batch, tokens in ((1, 12), (32, 15), (4, 128), (32, 16), (32, 128), (1, 64), (7, 63)):
        ids = np.ones((batch, tokens), dtype=np.int64)
        assert run({"input_ids": ids, "attention_mask": ids}).shape == (batch, 2)
    assert answered == [
        "onnx",
        "onnx",
        "openvino",  # 4 x 128 = 512: the bound
        "openvino",
        "openvino",
        "openvino",  # one text of 64 tokens: all compute, no batch to amortise a run's cost
        "onnx",  # 441 tokens in rows of 63
    ]


def test_openvino_takes_smaller_passes_from_fp32_than_from_int8():
    # measured crossings: OpenVINO bf16 gains on fp32 from a few dozen tokens, on int8 only
    # from a few hundred (runtime/openvino.py)
    assert openvino.min_tokens("onnx-fp32") < openvino.min_tokens("onnx-int8") <= 512
    assert openvino.min_tokens("something-else") == max(openvino.MIN_TOKENS.values())
    assert openvino.min_row_tokens("onnx-fp32") <= openvino.min_row_tokens("onnx-int8") < 512


# --- explicit requests ----------------------------------------------------------------------


def test_openvino_on_request_matches_onnx_runtime(store, no_amx):
    settings = settings_for(store)
    with TestClient(create_app(settings, jobs=False)) as client:
        texts = ["great film", "the awful film", "love love bad", "the"]

        def scores(backend: str) -> list[dict]:
            r = client.post(
                "/v1/classify", json={"model": "tiny", "texts": texts, "backend": backend}
            )
            assert r.status_code == 200, r.text
            assert r.json()["backend"] == backend
            return r.json()["predictions"]

        ov, ort = scores("openvino-bf16"), scores("onnx-fp32")
        assert [p["label"] for p in ov] == [p["label"] for p in ort]
        for a, b in zip(ov, ort, strict=True):
            assert abs(a["score"] - b["score"]) < 1e-3
    model = load_model("tiny-embed", settings, "openvino-bf16", store=store)
    reference = load_model("tiny-embed", settings, "onnx-fp32", store=store)
    texts = ["the film", "great great awful", "love"]
    assert model.backend == "openvino-bf16"
    np.testing.assert_allclose(model.embed(texts), reference.embed(texts), atol=1e-2)


def test_openvino_on_a_model_without_the_fp32_graph_is_a_400_naming_what_it_has(store):
    tiny = store.resolve("tiny")
    files = {k: v for k, v in tiny.manifest["files"].items() if k != "model.onnx"}
    files["model.safetensors"] = {"size": 1, "sha256": "0" * 64}
    no_fp32 = Artifact(tiny.id, tiny.path, {**tiny.manifest, "files": files})
    with pytest.raises(InvalidRequest, match="has no openvino-bf16 backend; available: torch"):
        CLASSIFY.pick_backend(no_fp32, "openvino-bf16")


# --- FNB_OPENVINO=off -------------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fnbundle.errors import InvalidRequest
    from fnbundle.loading import load_model
    from fnbundle.runtime import openvino
    from fnbundle.settings import Settings
    from fnbundle.store import Store

    openvino.CPUINFO = Path(sys.argv[2])  # a CPU with AMX: auto would try OpenVINO
    settings = Settings(store=sys.argv[1], threads=1)
    out = {"mode": settings.openvino, "at_import": "openvino" in sys.modules}
    out["classify"] = load_model("tiny", settings).backend
    out["embed"] = load_model("tiny-embed", settings).backend
    try:
        load_model("tiny", settings, "openvino-bf16")
        out["explicit"] = "served"
    except InvalidRequest as exc:
        out["explicit"] = exc.message
    out["imported"] = "openvino" in sys.modules
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_fnb_openvino_off_never_imports_openvino(store, tmp_path, mode):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "FNB_OPENVINO": mode}
    cpuinfo = fake_cpu(tmp_path, AMX_FLAGS)
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(store.root), str(cpuinfo)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["mode"] == mode and not out["at_import"]
    if mode == "off":
        assert (out["classify"], out["embed"]) == ("onnx-fp32", "onnx-fp32")
        assert (
            out["explicit"] == "The openvino-bf16 backend is off on this server (FNB_OPENVINO=off)."
        )
        assert not out["imported"]
    else:  # the same probe sees the import where OpenVINO is on
        assert (out["classify"], out["embed"]) == ("openvino-bf16", "openvino-bf16")
        assert out["explicit"] == "served" and out["imported"]
