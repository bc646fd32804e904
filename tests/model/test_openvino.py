"""OpenVINO on the tiny trained classifier (its fused fp32 graph): the runner in f32 and
bf16 judged by the export's own parity rules, explicit ``openvino-bf16`` requests through
the gateway, and ``auto``'s gate on a CPU with AMX (a fake ``/proc/cpuinfo``: the real gate
runs, so the test means the same on any CPU)."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.loading import load_model
from fnbundle.runtime import openvino
from fnbundle.runtime.onnx import onnx_runner, softmax
from fnbundle.store import Store
from fnbundle.training.export import parity

from tests.conftest import REVIEWS

pytestmark = pytest.mark.model


def review_texts(limit: int = 64) -> list[str]:
    with REVIEWS.open(encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)][:limit]


def test_the_runner_passes_the_fp32_rule_in_f32_and_the_int8_rule_in_bf16(tiny_trained):
    settings, _ = tiny_trained
    artifact = Store(settings.store_root).resolve("tiny")
    classifier = load_model("tiny", settings, "onnx-fp32", task="classify")
    path = str(artifact.file(openvino.FILE))
    reference_run, names = onnx_runner(path, settings)
    texts = review_texts()
    batches = [classifier.encode(texts[i : i + 16]) for i in range(0, len(texts), 16)]
    reference = np.concatenate([softmax(reference_run(b)) for b in batches])
    for precision, rule in (("f32", "onnx-fp32"), ("bf16", "onnx-int8")):
        run, ov_names = openvino.openvino_runner(path, settings, precision)
        assert ov_names == names
        probs = np.concatenate([softmax(run(b)) for b in batches])
        assert probs.dtype == np.float32
        record = parity(reference, probs, rule)
        assert record["passed"], (precision, record)


def test_openvino_on_request_through_the_gateway(tiny_trained):
    settings, _ = tiny_trained
    texts = review_texts(16)
    with TestClient(create_app(settings.model_copy(update={"preload": []}), jobs=False)) as client:

        def probs(backend: str) -> np.ndarray:
            r = client.post(
                "/v1/classify", json={"model": "tiny", "texts": texts, "backend": backend}
            )
            assert r.status_code == 200, r.text
            assert r.json()["backend"] == backend
            labels = r.json()["predictions"][0]["scores"].keys()
            return np.array([[p["scores"][k] for k in labels] for p in r.json()["predictions"]])

        default = Store(settings.store_root).resolve("tiny").manifest["default_backend"]
        record = parity(probs(default), probs("openvino-bf16"), "onnx-int8")
        assert record["passed"], record
    off = settings.model_copy(update={"openvino": "off", "preload": []})
    with TestClient(create_app(off, jobs=False)) as client:
        body = {"model": "tiny", "texts": ["ok"], "backend": "openvino-bf16"}
        r = client.post("/v1/classify", json=body)
        assert r.status_code == 400
        assert "FNB_OPENVINO=off" in r.json()["error"]["message"]


def test_auto_serves_openvino_on_a_cpu_with_amx_once_the_gate_passes(
    tiny_trained, tmp_path, monkeypatch, caplog
):
    settings, _ = tiny_trained
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx512f amx_tile amx_bf16\n", encoding="utf-8")
    monkeypatch.setattr(openvino, "CPUINFO", cpuinfo)
    caplog.set_level(logging.INFO, logger="fnbundle.runtime.openvino")
    with TestClient(create_app(settings.model_copy(update={"preload": []}), jobs=False)) as client:
        r = client.post("/v1/classify", json={"model": "tiny", "texts": review_texts(4)})
        assert r.status_code == 200, r.text
        assert r.json()["backend"] == "openvino-bf16"
        assert client.get("/v1/models/tiny").json()["backend"] == "openvino-bf16"
    assert "serving openvino-bf16 (parity against onnx-" in caplog.text
