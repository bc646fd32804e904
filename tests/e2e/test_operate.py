"""Operating a real gateway: `fnbundle serve` with FNB_LOG_FORMAT=json and an API key, serving
a tiny ONNX classifier, a churn model (predict) and the tiny Llama (generate), scraped and
read the way an operator's Prometheus and log shipper would."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fnbundle.store import Store
from fnbundle.tasks.predict.serve import PredictTask
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.e2e.conftest import FNBUNDLE, fnb_env, gateway, import_llm
from tests.unit.tiny_onnx import publish_tiny

pytestmark = pytest.mark.e2e

KEY = "operator-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMING = re.compile(r"queue;dur=(\d+\.\d+), inference;dur=(\d+\.\d+)")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llm_base) -> Path:
    """A tiny ONNX classifier, plus a churn model and the tiny Llama (both published by the
    CLI)."""
    root = tmp_path_factory.mktemp("operate") / "store"
    publish_tiny(Store(root), "tiny")
    churn = ["--data", str(REPO / "data" / "churn.csv"), "--name", "churn", "--cv-folds", "2"]
    trained = subprocess.run(
        [*FNBUNDLE, "train", "tabular", *churn, "--model", "logistic_regression", "--json"],
        env=fnb_env(root, FNB_DATA_ROOTS=str(REPO / "data")),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    import_llm(root, tiny_llm_base, "llm")
    return root


@pytest.fixture(scope="module")
def served(store) -> Iterator[tuple[str, list[str], str]]:
    """(url, the gateway's output lines so far, the classifier's name)."""
    lines: list[str] = []
    with gateway(store, lines, FNB_LOG_FORMAT="json", FNB_API_KEYS=KEY) as url:
        yield url, lines, "tiny"


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def json_lines(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in list(lines) if line.startswith("{")]


def test_inference_answers_carry_the_request_id_and_their_timing(served):
    url, _, model = served
    calls = [
        ("/v1/classify", {"model": model, "texts": ["great film", "awful"]}),
        ("/v1/predict", {**PredictTask.example, "model": "churn"}),
    ]
    for path, body in calls:
        answer = httpx.post(
            f"{url}{path}", json=body, headers={**AUTH, "X-Request-ID": f"op{path}"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == f"op{path}"
        match = TIMING.fullmatch(answer.headers["server-timing"])
        assert match is not None, answer.headers["server-timing"]
        assert float(match.group(2)) > 0
    made = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=30).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_each_log_line_is_json_and_the_request_id_leads_to_its_line(served):
    url, lines, _ = served
    answer = httpx.post(
        f"{url}/v1/predict",
        json={**PredictTask.example, "model": "churn"},
        headers={**AUTH, "X-Request-ID": "find-me-7"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    for _ in range(50):  # the output is read by a thread
        found = [line for line in json_lines(lines) if line.get("request_id") == "find-me-7"]
        if found:
            break
        time.sleep(0.1)
    (line,) = found
    assert (line["route"], line["status"], line["logger"]) == (
        "/v1/predict",
        200,
        "fnbundle.access",
    )
    assert line["model"].startswith("churn-") and line["duration_ms"] > 0
    assert {"time", "level", "message"} <= set(line)
    logged = json_lines(lines)
    # The server's own lines come through the same formatter.
    assert any(entry["logger"].startswith("uvicorn") for entry in logged)
    # Every line a logger wrote is JSON: the only other output is the CLI's banner.
    others = [line for line in lines if not line.startswith("{") and line.strip()]
    assert not [line for line in others if re.match(r"(INFO|WARNING|ERROR)\b", line)], others


def test_metrics_need_the_key_and_show_what_was_served(served):
    url, _, _ = served
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers=AUTH,
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    assert re.fullmatch(r"inference;dur=\d+\.\d+", chat.headers["server-timing"])  # no batcher
    generated = chat.json()["usage"]["completion_tokens"]
    page = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    samples = metric_samples(page.text)
    names = {name for name, _ in samples}
    for expected in (
        "fnbundle_requests_total",
        "fnbundle_request_duration_seconds_bucket",
        "fnbundle_batch_size_bucket",
        "fnbundle_queue_wait_seconds_bucket",
        "fnbundle_model_loaded",
        "fnbundle_model_load_duration_seconds",
        "fnbundle_jobs",
        "fnbundle_generated_tokens_total",
        "fnbundle_generation_tokens_per_second_bucket",
    ):
        assert expected in names, expected
    tokens = [v for (name, _), v in samples.items() if name == "fnbundle_generated_tokens_total"]
    assert sum(tokens) == generated > 0
    # A stream counts its tokens too, though it did not ask for its usage.
    streamed = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**streamed, "stream": True},
        headers=AUTH, timeout=60,
    ) as events:  # fmt: skip
        chunks = [json.loads(line[6:]) for line in events.iter_lines() if line[6:7] == "{"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # all 4 tokens were made
    page = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30)
    after = metric_samples(page.text)
    total = sum(v for (name, _), v in after.items() if name == "fnbundle_generated_tokens_total")
    assert total == generated + 4
    loaded = {
        dict(labels)["task"]
        for (name, labels), v in samples.items()
        if name == "fnbundle_model_loaded" and v == 1
    }
    assert {"classify", "predict", "generate"} <= loaded
    refused = [
        v
        for (name, labels), v in samples.items()
        if name == "fnbundle_requests_total"
        and dict(labels)["route"] == "/metrics"
        and dict(labels)["status"] == "401"
    ]
    assert refused == [1.0]
