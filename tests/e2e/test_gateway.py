"""The gateway over real HTTP: what a `curl` or `fetch` user sees."""

import asyncio
import json
import shutil
import subprocess
import time

import httpx
import pytest
from fnbundle.runtime import openvino
from fnbundle.store import Store

from tests.e2e.conftest import gateway
from tests.model.helpers import clone_as, flip_byte

pytestmark = pytest.mark.e2e

POSITIVE = "Fantastic service, the courier was early and friendly."
NEGATIVE = "Terrible. The order arrived broken and nobody answered my emails."


def test_classify_returns_labels_and_probabilities(served):
    url, model_id = served
    r = httpx.post(f"{url}/v1/classify", json={"model": "tiny", "texts": [POSITIVE, NEGATIVE]})
    assert r.status_code == 200
    body = r.json()
    # auto: OpenVINO where this CPU has AMX (the tiny model passes its gate), else the
    # artifact's parity-checked default; /v1/models names the same
    one = httpx.get(f"{url}/v1/models/tiny").json()
    amx = openvino.fast_bf16_cpu(openvino.CPUINFO)
    expected = "openvino-bf16" if amx else one["default_backend"]
    assert body["model"] == model_id and body["backend"] == expected == one["backend"]
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert set(p["scores"]) == {"negative", "positive"}
        assert p["score"] == max(p["scores"].values())
        assert p["label"] == max(p["scores"], key=p["scores"].get)
        assert abs(sum(p["scores"].values()) - 1) < 1e-4


def test_backends_are_selectable_per_request(served):
    url, _ = served
    scores = {}
    for backend in ("torch", "onnx-fp32", "onnx-int8", "openvino-bf16"):
        r = httpx.post(
            f"{url}/v1/classify",
            json={"model": "tiny", "texts": [POSITIVE], "backend": backend},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["backend"] == backend
        scores[backend] = r.json()["predictions"][0]["scores"]["positive"]
    assert abs(scores["torch"] - scores["onnx-fp32"]) < 1e-4
    assert abs(scores["openvino-bf16"] - scores["onnx-fp32"]) < 0.02  # the int8 rule's mean


def test_models_and_probes(served):
    url, model_id = served
    data = httpx.get(f"{url}/v1/models").json()["data"]
    assert [(m["id"], m["name"], m["latest"], m["state"]) for m in data] == [
        (model_id, "tiny", True, "ready")
    ]
    one = httpx.get(f"{url}/v1/models/tiny").json()
    assert one["id"] == model_id and one["metrics"]["accuracy"] > 0.5
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "models": {model_id: "ready"}}
    assert httpx.get(f"{url}/docs").status_code == 200


# int8 dynamic quantization picks its activation scale per batch, so a text's scores move a
# little with the texts it is batched with (the export's parity rule allows 0.02 on average);
# fp32 answers the same in any batch.
@pytest.mark.parametrize(("backend", "tolerance"), [("onnx-fp32", 1e-4), ("onnx-int8", 0.02)])
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served, backend, tolerance):
    url, _ = served
    texts = [f"{POSITIVE} #{i}" if i % 2 else f"{NEGATIVE} #{i}" for i in range(48)]

    def body(batch: list[str]) -> dict[str, object]:
        return {"model": "tiny", "texts": batch, "backend": backend}

    async def fire():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/v1/classify", json=body([t])) for t in texts)
            )

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    alone = httpx.post(f"{url}/v1/classify", json=body(texts)).json()["predictions"]
    for r, expected in zip(responses, alone, strict=True):
        assert r.json()["backend"] == backend
        got = r.json()["predictions"][0]
        assert got["label"] == expected["label"]
        assert abs(got["score"] - expected["score"]) < tolerance


@pytest.mark.parametrize(
    ("content", "status", "type_"),
    [
        (b'{"model": "tiny", "texts": ["unterminated', 400, "invalid_json"),
        (b'{"model": "tiny", "texts": [42]}', 422, "validation_error"),
        (b'{"model": "tiny", "texts": []}', 400, "limit_exceeded"),
        (b'{"model": "..%2F..%2Fetc%2Fpasswd", "texts": ["x"]}', 400, "invalid_request"),
        (b'{"model": "missing", "texts": ["x"]}', 404, "not_found"),
        (b'{"model": "tiny", "texts": ["' + b"x" * 2_000_000 + b'"]}', 413, "payload_too_large"),
    ],
)
def test_bad_input_over_http(served, content, status, type_):
    url, _ = served
    r = httpx.post(
        f"{url}/v1/classify", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    assert r.json()["error"]["type"] == type_
    assert httpx.get(f"{url}/healthz").status_code == 200  # and the server keeps going


def test_api_keys(tiny_trained):
    settings, result = tiny_trained
    keys = ["first-key-0123456789", "second-key-0123456789"]
    with gateway(settings.store_root, FNB_API_KEYS=",".join(keys)) as url:
        body = {"model": "tiny", "texts": [POSITIVE]}
        assert httpx.post(f"{url}/v1/classify", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{url}/v1/classify", json=body, headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {keys[1]}"}
        assert httpx.post(f"{url}/v1/classify", json=body, headers=right).status_code == 200
        # The probe needs no key, and without one it names no model and no file.
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
        detail = httpx.get(f"{url}/readyz", headers=right).json()
        assert detail == {"status": "ready", "models": {result.model_id: "ready"}}


def test_corrupt_artifact_is_503_and_other_models_keep_serving(tiny_trained, tmp_path):
    settings, _ = tiny_trained
    store = Store(tmp_path / "store")
    source = Store(settings.store_root).resolve("tiny")
    healthy = clone_as(store, source, "healthy")
    broken = clone_as(store, source, "broken")
    flip_byte(
        broken.path
        / broken.manifest["default_backend"]
        .replace("onnx-int8", "model.int8.onnx")
        .replace("onnx-fp32", "model.onnx")
    )
    with gateway(store.root) as url:
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["status"] == "degraded" and ready["models"][healthy.id] == "ready"
        r = httpx.post(f"{url}/v1/classify", json={"model": "broken", "texts": [POSITIVE]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "artifact_corrupt"
        assert broken.id in r.json()["error"]["message"]
        ok = httpx.post(f"{url}/v1/classify", json={"model": "healthy", "texts": [POSITIVE]})
        assert ok.status_code == 200 and ok.json()["model"] == healthy.id
    shutil.rmtree(tmp_path / "store")


def test_missing_file_is_503_naming_the_artifact(tiny_trained, tmp_path):
    settings, _ = tiny_trained
    store = Store(tmp_path / "store")
    broken = clone_as(store, Store(settings.store_root).resolve("tiny"), "gone")
    (broken.path / "tokenizer.json").unlink()
    with gateway(store.root) as url:
        r = httpx.post(f"{url}/v1/classify", json={"model": "gone", "texts": [POSITIVE]})
        assert r.status_code == 503 and broken.id in r.json()["error"]["message"]
        assert "tokenizer.json" in r.json()["error"]["message"]


def test_the_printed_curl_example_works_when_pasted(tiny_trained):
    """`fnbundle serve` prints curl lines; on a narrow terminal they must not be wrapped
    into something a shell (or the JSON inside) would read differently."""
    settings, result = tiny_trained
    output: list[str] = []
    with gateway(settings.store_root, output, COLUMNS="40") as url:
        deadline = time.monotonic() + 30
        while not any(line.startswith("open ") for line in output):
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.1)
        text = "".join(output)
        block = text[text.index("Try:") + len("Try:") : text.index("\nopen ")]
        classify = block.strip().split("\ncurl ")[0]  # the first command, continuation included
        assert classify.startswith(f"curl -s {url}/v1/classify")
        pasted = subprocess.run(
            ["bash", "-c", classify], capture_output=True, text=True, timeout=30, check=True
        )
    body = json.loads(pasted.stdout)
    assert body["model"] == result.model_id and len(body["predictions"]) == 2
