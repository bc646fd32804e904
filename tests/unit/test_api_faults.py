"""Faults that must stay with their own request or model: texts no tokenizer can encode,
corrupt weights, a label list that does not match the model. The store holds tiny ONNX
classifiers built without torch (tests/unit/tiny_onnx.py)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.settings import Settings
from fnbundle.store import Store

from tests.unit.tiny_onnx import publish_tiny

pytestmark = pytest.mark.unit

LONE_SURROGATE = b'"bad \\ud800 text"'  # valid JSON, not encodable as UTF-8


def classify_raw(client: TestClient, texts: list[bytes]) -> tuple[int, dict]:
    body = b'{"model": "tiny", "texts": [' + b", ".join(texts) + b"]}"
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    return r.status_code, r.json()


def test_unencodable_texts_are_400_and_never_fail_other_clients(tmp_path):
    publish_tiny(Store(tmp_path), "tiny")
    # A long batching window so that bad and good requests would share forward passes.
    settings = Settings(store=tmp_path, batch_max_wait_ms=20)
    requests = [
        [b'"good film"', LONE_SURROGATE] if i % 3 == 0 else [json.dumps(f"great {i}").encode()]
        for i in range(60)
    ]
    with TestClient(create_app(settings, jobs=False)) as client:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda texts: classify_raw(client, texts), requests))
        batches = client.app.state.host.batchers()  # the batchers saw the valid ones only
    for texts, (status, body) in zip(requests, answers, strict=True):
        if LONE_SURROGATE in texts:
            assert status == 400, body
            assert body["error"]["field"] == "texts.1"
            assert "surrogate" in body["error"]["message"]
        else:
            assert status == 200, body
            assert body["predictions"][0]["label"] == "positive"
    assert batches and all(b.isolations == 0 for b in batches)


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"onnx_bytes": b"this is not an ONNX model " * 8}, "model.onnx"),
        ({"labels": ("negative", "neutral", "positive"), "n_outputs": 2}, "3 labels"),
    ],
    ids=["corrupt-onnx", "label-count"],
)
def test_a_model_that_cannot_serve_is_503_with_its_reason_and_the_others_serve(
    tmp_path, broken, reason
):
    store = Store(tmp_path)
    healthy = publish_tiny(store, "healthy")
    bad = publish_tiny(store, "bad", **broken)
    with TestClient(create_app(Settings(store=tmp_path), jobs=False)) as client:
        for _ in range(2):  # the failure is remembered: same answer, no reload
            r = client.post("/v1/classify", json={"model": "bad", "texts": ["good film"]})
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["type"] == "artifact_corrupt"
            assert bad.id in error["message"] and reason in error["message"]
            assert str(tmp_path) not in error["message"]
        ok = client.post("/v1/classify", json={"model": "healthy", "texts": ["good film"]})
        assert ok.status_code == 200 and ok.json()["model"] == healthy.id
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models[bad.id]["state"] == "failed" and reason in models[bad.id]["reason"]
        assert models[healthy.id]["state"] == "ready" and "reason" not in models[healthy.id]
        one = client.get("/v1/models/bad").json()
        assert one["state"] == "failed" and one["reason"] == models[bad.id]["reason"]
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"


def test_broken_aliases_and_manifests_never_break_the_models_list(tmp_path):
    store = Store(tmp_path)
    healthy = publish_tiny(store, "healthy")
    odd = publish_tiny(store, "odd")
    manifest = json.loads((odd.path / "manifest.json").read_text())
    manifest.update(labels=5, backends="all")
    (odd.path / "manifest.json").write_text(json.dumps(manifest))
    (store.aliases_dir / "listy.json").write_text("[1, 2]")
    (store.aliases_dir / "escape.json").write_text(json.dumps({"id": "../../etc"}))
    with TestClient(create_app(Settings(store=tmp_path), jobs=False)) as client:
        for name, status in (("healthy", 200), ("odd", 503)):  # both loads have ended
            r = client.post("/v1/classify", json={"model": name, "texts": ["good"]})
            assert r.status_code == status, r.text
        listed = client.get("/v1/models")
        assert listed.status_code == 200, listed.text
        models = {m["id"]: m for m in listed.json()["data"]}
        assert models[healthy.id]["state"] == "ready"
        assert models[odd.id]["state"] == "failed" and "label names" in models[odd.id]["reason"]
        for alias in ("listy", "escape"):
            for r in (
                client.get(f"/v1/models/{alias}"),
                client.post("/v1/classify", json={"model": alias, "texts": ["good"]}),
            ):
                assert r.status_code == 503, r.text
                assert r.json()["error"]["type"] == "artifact_corrupt"
