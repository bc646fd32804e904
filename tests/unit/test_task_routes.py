"""The inference routes' short path (``api/serving.py``, ``TaskRoute``): a well-formed JSON
body is validated from its bytes and answered without FastAPI's generic handler, and every
request, well-formed or not, is answered byte for byte as FastAPI's own ``APIRoute`` answers
it. The store holds tiny ONNX models built without torch (tests/unit/tiny_onnx.py)."""

from __future__ import annotations

import json
import time
from functools import partial

import fastapi.routing
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from fnbundle.api import app as app_module
from fnbundle.api import create_app
from fnbundle.api.serving import json_content_type, task_router
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.tasks import REGISTRY

from tests.unit.tiny_onnx import publish_tiny, publish_tiny_embedder

pytestmark = pytest.mark.unit

JSON = "application/json"
# Requests that pass validation, for a model the store does not hold (a 404 from the host).
VALID = {
    "/v1/classify": {"model": "nope", "texts": ["good film"]},
    "/v1/embeddings": {"model": "nope", "input": ["good film"]},
    "/v1/chat/completions": {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "nope", "prompt": "hi", "max_tokens": 4},
    "/v1/predict": {"model": "nope", "rows": [{"plan": "pro", "seats": 4}]},
}
# (body, content type) pairs: every way a body can be other than well-formed.
ODD = {
    "invalid JSON": (b'{"model": ', JSON),
    "empty": (b"", JSON),
    "not an object": (b"[1, 2]", JSON),
    "a lone surrogate": (b'{"model": "bad \\ud800 name"}', JSON),
    "invalid UTF-8": (b'{"model": "\xff\xfe"}', JSON),
    "nested 5000 deep": (b"[" * 5000 + b"]" * 5000, JSON),
    "an unknown field": (b'{"model": "nope", "surprise": 1}', JSON),
    "a missing field": (b"{}", JSON),
    "a wrong type": (b'{"model": 7}', JSON),
    "null": (b"null", JSON),
}


def test_the_routes_the_registry_declares_are_all_covered():
    paths = {r.path for t in REGISTRY.serving.values() for r in t.routes()}
    assert paths == set(VALID)


def clients(tmp_path, **settings):
    """A gateway with the short path and one whose task routes are FastAPI's ``APIRoute``."""
    config = Settings(store=tmp_path, **settings)
    short = TestClient(create_app(config, jobs=False))
    mp = pytest.MonkeyPatch()
    mp.setattr(app_module, "task_router", partial(task_router, route_class=APIRoute))
    try:
        plain = TestClient(create_app(config, jobs=False))
    finally:
        mp.undo()
    return short, plain


def same_answer(short, plain, path: str, body: bytes, content_type: str | None):
    headers = {"content-type": content_type} if content_type else {}
    a = short.post(path, content=body, headers=headers)
    b = plain.post(path, content=body, headers=headers)
    assert (a.status_code, a.content) == (b.status_code, b.content), (path, body[:60])
    assert a.headers.get("content-type") == b.headers.get("content-type")
    return a


@pytest.fixture
def generic_handler_calls(monkeypatch):
    """How many requests went through FastAPI's generic handler (its dependency solving)."""
    calls = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args, **kwargs):
        calls.append(kwargs["request"].url.path)  # probes too: filter by path
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    return calls


@pytest.mark.parametrize("path", sorted(VALID))
def test_every_body_is_answered_as_fastapi_answers_it(tmp_path, path):
    short, plain = clients(tmp_path)
    valid = json.dumps(VALID[path]).encode()
    with short, plain:
        cases = [
            (valid, JSON),
            (valid, "application/json; charset=utf-8"),
            (valid, "Application/JSON"),
            (valid, "application/vnd.example+json"),
            (valid, "text/plain"),  # FastAPI does not read it as JSON: a 422
            (valid, None),
            *ODD.values(),
        ]
        answers = [same_answer(short, plain, path, body, kind) for body, kind in cases]
    assert answers[0].status_code == 404  # valid, for a model the store does not hold
    assert {a.status_code for a in answers[4:6]} == {422}
    assert {a.status_code for a in answers[6:]} <= {400, 422}


def test_only_well_formed_json_bodies_take_the_short_path(tmp_path, generic_handler_calls):
    short, _ = clients(tmp_path)
    valid = json.dumps(VALID["/v1/classify"]).encode()
    with short:
        for kind in (JSON, "application/json; charset=utf-8", "application/problem+json"):
            assert short.post("/v1/classify", content=valid, headers={"content-type": kind})
        assert generic_handler_calls == []
        short.post("/v1/classify", content=valid, headers={"content-type": "text/plain"})
        short.post("/v1/classify", content=b'{"model": "nope"}', headers={"content-type": JSON})
    assert generic_handler_calls == ["/v1/classify"] * 2


def ready(client):
    for _ in range(600):  # the preloads run in the background
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the models did not load")


def test_answers_of_a_served_model_are_the_same_bytes(tmp_path, generic_handler_calls):
    store = Store(tmp_path)
    publish_tiny(store, "tiny")
    publish_tiny_embedder(store, "tiny-embed")
    short, plain = clients(tmp_path)
    requests = [
        ("/v1/classify", {"model": "tiny", "texts": ["good film", "awful film", "the"]}),
        ("/v1/classify", {"model": "tiny", "texts": ["great"], "backend": "onnx-fp32"}),
        ("/v1/embeddings", {"model": "tiny-embed", "input": ["good film", "the"]}),
        ("/v1/embeddings", {"model": "tiny-embed", "input": "love", "encoding_format": "base64"}),
        ("/v1/embeddings", {"model": "tiny-embed", "input": [[2, 9]], "user": "u-1"}),
    ]
    with short, plain:
        ready(short)
        ready(plain)
        for path, payload in requests:
            answer = same_answer(short, plain, path, json.dumps(payload).encode(), JSON)
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == JSON
    # the plain gateway's requests only: the short one answered every valid body itself
    assert [p for p in generic_handler_calls if p in VALID] == [p for p, _ in requests]


@pytest.mark.parametrize(
    ("value", "json_"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        (" APPLICATION/JSON ", True),
        ("application/cloudevents+json", True),
        ("text/json", False),
        ("application/jsonl", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        (None, False),
    ],
)
def test_json_content_types_are_those_fastapi_reads_as_json(value, json_):
    assert json_content_type(value) is json_
