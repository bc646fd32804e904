"""What an operator sees: GET /metrics, the request id, Server-Timing and JSON log lines, on
a real app serving tiny ONNX models (a classifier and an embedder) and a real job manager
that starts no worker (``max_running=0``: a submitted job stays queued)."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.jobs.manager import JobManager
from fnbundle.logs import (
    JsonFormatter,
    RequestContext,
    log_handler,
    request_scope,
    valid_request_id,
)
from fnbundle.runtime.artifacts import ONNX_FILES
from fnbundle.runtime.openvino import auto_candidate
from fnbundle.settings import Settings
from fnbundle.store import Store
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, REVIEWS
from tests.unit.tiny_onnx import publish_tiny, publish_tiny_embedder

pytestmark = pytest.mark.unit

KEY = "s3cret-key-0123456789"
METRICS_KEY = "scraper-key-0123456789"
TIMING = re.compile(r"queue;dur=(\d+\.\d+), inference;dur=(\d+\.\d+)")


def settings_for(tmp_path, **extra) -> Settings:
    return Settings(
        store=tmp_path / "store", jobs_dir=tmp_path / "jobs", data_roots=[REPO], **extra
    )


def ready(client: TestClient) -> TestClient:
    for _ in range(600):  # the preloads run in the background
        if client.get("/readyz").status_code == 200:
            return client
        time.sleep(0.05)
    raise TimeoutError("the models did not load")


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path / "store")
    publish_tiny(store, "tiny")
    publish_tiny_embedder(store, "tiny-embed")
    return store


@pytest.fixture
def client(tmp_path, store) -> Iterator[TestClient]:
    settings = settings_for(tmp_path)
    manager = JobManager(settings, max_running=0)
    with TestClient(create_app(settings, job_manager=manager)) as c:
        yield ready(c)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page: (name, labels) -> value (parsed by prometheus' own
    parser, so the page must be valid text format)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(page: dict, name: str, **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


def classify(client: TestClient, **headers: str):
    return client.post(
        "/v1/classify", json={"model": "tiny", "texts": ["great film"]}, headers=headers
    )


# --- the request id -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("Root=1-5759e988:span/7+x@host", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("two words", False),
        ('quote"d', False),
        ("comma,list", False),
        ("", False),
        ("é-accent", False),
    ],
)
def test_a_request_id_is_kept_only_when_it_is_a_short_printable_token(given, kept):
    assert (valid_request_id(given) == given) is kept
    assert valid_request_id(given.encode("utf-8")) == (given if kept else None)


def test_a_valid_request_id_is_echoed_and_a_missing_or_bad_one_is_made(client):
    assert classify(client, **{"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
    made = classify(client).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert classify(client).headers["x-request-id"] != made  # one per request
    bad = classify(client, **{"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", bad)
    # Errors carry it too: the line an operator looks for when a user reports one.
    refused = client.post("/v1/classify", json={"texts": []}, headers={"X-Request-ID": "err-1"})
    assert refused.status_code == 422 and refused.headers["x-request-id"] == "err-1"


# --- Server-Timing ------------------------------------------------------------------------


def test_inference_answers_say_how_long_they_queued_and_ran(client):
    answers = [
        classify(client),
        client.post("/v1/embeddings", json={"model": "tiny-embed", "input": ["a good film"]}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        match = TIMING.fullmatch(answer.headers["server-timing"])
        assert match is not None, answer.headers["server-timing"]
        queue_ms, inference_ms = map(float, match.groups())
        assert 0 <= queue_ms < 60_000 and 0 < inference_ms < 60_000
    # No model ran: no timing to report.
    missing = client.post("/v1/classify", json={"model": "nope", "texts": ["a"]})
    assert missing.status_code == 404 and "server-timing" not in missing.headers
    assert "server-timing" not in client.get("/v1/models").headers


# --- GET /metrics ---------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template_model_and_status(client, store):
    model = store.resolve("tiny").id
    before = samples(client.get("/metrics").text)
    for _ in range(3):
        assert classify(client).status_code == 200
    client.post("/v1/classify", json={"model": "nope", "texts": ["a"]})
    client.get("/v1/jobs/job-20260101000000-0123abcd")
    client.get("/no/such/path")
    page = samples(client.get("/metrics").text)

    labels = {"route": "/v1/classify", "method": "POST", "status": "200", "model": model}
    counted = value(page, "fnbundle_requests_total", **labels)
    assert counted - value(before, "fnbundle_requests_total", **labels) == 3
    # An unknown model is never a label value: no store id, no model.
    assert value(page, "fnbundle_requests_total", **{**labels, "status": "404", "model": ""}) == 1
    # The route template, not the raw path; a path no route serves is "unmatched".
    job = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "404", "model": ""}
    assert value(page, "fnbundle_requests_total", **job) == 1
    lost = {"route": "unmatched", "method": "GET", "status": "404", "model": ""}
    assert value(page, "fnbundle_requests_total", **lost) == 1
    assert not any("job-2026" in str(key) or "/no/such" in str(key) for key in page)

    latency = {"route": "/v1/classify", "method": "POST", "model": model}
    assert value(page, "fnbundle_request_duration_seconds_bucket", **latency, le="+Inf") >= 3
    assert value(page, "fnbundle_request_duration_seconds_bucket", **latency, le="0.001") <= 3
    assert value(page, "fnbundle_request_duration_seconds_count", **latency) == counted


def test_metrics_show_batches_queue_waits_and_the_loaded_models(client, store):
    model = store.resolve("tiny").id
    embedder = store.resolve("tiny-embed").id
    for _ in range(2):
        assert classify(client).status_code == 200
    page = samples(client.get("/metrics").text)
    ours = {"task": "classify", "model": model}
    assert value(page, "fnbundle_batch_size_count", **ours) >= 2
    assert value(page, "fnbundle_batch_size_sum", **ours) >= 2  # one text each
    assert value(page, "fnbundle_batch_size_bucket", **ours, le="+Inf") >= 2
    assert value(page, "fnbundle_queue_wait_seconds_count", **ours) >= 2
    assert value(page, "fnbundle_inference_seconds_count", **ours) >= 2
    for task, model_id in (("classify", model), ("embed", embedder)):
        # the backend serving: OpenVINO where the CPU has AMX (the tiny graphs pass its
        # parity gate exactly), else the artifact's ONNX Runtime default
        artifact = store.resolve(model_id)
        backend = "openvino-bf16" if auto_candidate(artifact, ONNX_FILES) else "onnx-fp32"
        assert client.get(f"/v1/models/{model_id}").json()["backend"] == backend
        loaded = {"task": task, "model": model_id, "backend": backend}
        assert value(page, "fnbundle_model_loaded", **loaded) == 1
        assert value(page, "fnbundle_model_load_duration_seconds", **loaded) > 0
        assert value(page, "fnbundle_model_load_seconds_count", task=task, backend=backend) == 1


def test_metrics_count_jobs_by_task_and_state(client):
    page = samples(client.get("/metrics").text)
    assert value(page, "fnbundle_jobs", task="train_classifier", state="queued") == 0
    assert ("fnbundle_jobs", frozenset({("task", "train_tabular"), ("state", "failed")})) in page
    body = {"task": "train_classifier", "params": {"data": str(REVIEWS), "name": "t", "epochs": 1}}
    for _ in range(2):
        assert client.post("/v1/jobs", json=body).status_code == 202
    page = samples(client.get("/metrics").text)
    assert value(page, "fnbundle_jobs", task="train_classifier", state="queued") == 2
    assert value(page, "fnbundle_jobs", task="train_classifier", state="running") == 0


def test_metrics_take_the_api_key_or_their_own_or_none_when_public(tmp_path):
    def status(settings: Settings, key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with TestClient(create_app(settings, jobs=False)) as c:
            return c.get("/metrics", headers=headers).status_code

    keyed = settings_for(tmp_path, api_keys=[KEY])
    assert status(keyed, None) == 401
    assert status(keyed, "wrong-key-0123456789") == 401
    assert status(keyed, KEY) == 200
    own = settings_for(tmp_path, api_keys=[KEY], metrics_key=METRICS_KEY)
    assert (status(own, METRICS_KEY), status(own, KEY), status(own, None)) == (200, 401, 401)
    public = settings_for(tmp_path, api_keys=[KEY], metrics_public=True)
    assert status(public, None) == 200
    assert status(settings_for(tmp_path), None) == 200  # no keys at all: like every route
    with TestClient(create_app(keyed, jobs=False)) as c:
        refused = c.get("/metrics")
        assert refused.json()["error"]["type"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "fnbundle_" not in refused.text


def test_two_apps_in_one_process_keep_their_own_counts(tmp_path, store):
    settings = settings_for(tmp_path)
    with (
        TestClient(create_app(settings, jobs=False)) as first,
        TestClient(create_app(settings, jobs=False)) as second,
    ):
        ready(first)
        ready(second)
        for _ in range(2):
            classify(first)
        model = store.resolve("tiny").id
        labels = {"route": "/v1/classify", "method": "POST", "status": "200", "model": model}
        assert value(samples(first.get("/metrics").text), "fnbundle_requests_total", **labels) == 2
        assert value(samples(second.get("/metrics").text), "fnbundle_requests_total", **labels) == 0


# --- logs -----------------------------------------------------------------------------------


def test_a_json_line_carries_the_request_and_parses():
    formatter = JsonFormatter()
    with request_scope(RequestContext("req-7")):
        stream = io.StringIO()
        handler = log_handler("json", stream=stream)
        logger = logging.getLogger("fnbundle.test_observability")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.warning("loaded %s", "model", extra={"model": "m-1", "status": 200})
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("it failed")
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "loaded model" and first["level"] == "warning"
    assert (first["request_id"], first["model"], first["status"]) == ("req-7", "m-1", 200)
    assert first["logger"] == "fnbundle.test_observability"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert "ValueError: boom" in second["exc_info"] and second["level"] == "error"
    assert formatter.format(logging.makeLogRecord({"msg": "plain"}))  # no request: still a line


def test_each_request_logs_one_access_line_with_its_id(client, store):
    stream = io.StringIO()
    handler = log_handler("json", stream=stream)
    access = logging.getLogger("fnbundle.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        rid = classify(client, **{"X-Request-ID": "line-1"}).headers["x-request-id"]
        client.get("/healthz")  # a probe: at debug, not in an operator's INFO stream
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["request_id"] == rid == "line-1"
    assert (line["route"], line["status"]) == ("/v1/classify", 200)
    assert line["model"] == store.resolve("tiny").id and line["duration_ms"] > 0
    assert line["logger"] == "fnbundle.access" and "POST /v1/classify 200" in line["message"]


def test_a_job_records_the_request_that_submitted_it(client):
    body = {"task": "train_classifier", "params": {"data": str(REVIEWS), "name": "t", "epochs": 1}}
    accepted = client.post("/v1/jobs", json=body, headers={"X-Request-ID": "submit-9"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["request_id"] == "submit-9"
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200  # the stream then ends
    stream = client.get(f"/v1/jobs/{job_id}/events").text
    events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    assert events[0]["data"] == {"status": "queued", "request_id": "submit-9"}
    assert events[-1]["data"]["status"] == "cancelled"
