"""The gateway's guards and error contract, on an app whose store holds no real model."""

import asyncio
import json
import time
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.api.middleware import GuardMiddleware
from fnbundle.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def client(tmp_path):
    settings = Settings(store=tmp_path, max_body_bytes=2048, max_texts=4, max_text_chars=50)
    with TestClient(create_app(settings, jobs=False)) as c:
        yield c


KEY = "s3cret-key-0123456789"
OTHER = "other-key-0123456789"


@pytest.fixture
def keyed(tmp_path):
    settings = Settings(store=tmp_path, api_keys=[KEY, OTHER], max_body_bytes=2048)
    with TestClient(create_app(settings, jobs=False)) as c:
        yield c


def error(response, status, type_):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_
    assert "Traceback" not in response.text
    return body["error"]


def test_probes_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"  # empty store
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]
    assert client.get("/v1/models").json() == {"object": "list", "data": []}


@pytest.mark.parametrize(
    ("payload", "status", "type_", "field"),
    [
        ({"model": "tiny", "texts": []}, 400, "limit_exceeded", "texts"),
        ({"model": "tiny", "texts": ["a"] * 5}, 400, "limit_exceeded", "texts"),
        ({"model": "tiny", "texts": ["a" * 51]}, 400, "limit_exceeded", "texts.0"),
        ({"model": "tiny", "texts": ["  "]}, 400, "invalid_request", "texts.0"),
        ({"model": "tiny", "texts": "not a list"}, 422, "validation_error", "texts"),
        ({"model": "tiny", "texts": ["ok", 3]}, 422, "validation_error", "texts.1"),
        ({"texts": ["ok"]}, 422, "validation_error", "model"),
        ({"model": "tiny", "texts": ["ok"], "extra": 1}, 422, "validation_error", "extra"),
        ({"model": "tiny", "texts": ["ok"], "backend": "gpu"}, 422, "validation_error", "backend"),
        ({"model": "nope", "texts": ["ok"]}, 404, "not_found", "model"),
        ({"model": "../../etc/passwd", "texts": ["ok"]}, 400, "invalid_request", "model"),
        ({"model": "/etc/passwd", "texts": ["ok"]}, 400, "invalid_request", "model"),
        ({"model": "..%2f..%2fetc", "texts": ["ok"]}, 400, "invalid_request", "model"),
        ({"model": "hf:org/model", "texts": ["ok"]}, 400, "invalid_request", "model"),
    ],
)
def test_bad_requests_get_a_clear_error(client, payload, status, type_, field):
    err = error(client.post("/v1/classify", json=payload), status, type_)
    assert err.get("field") == field
    assert err["message"]


def test_limits_are_named_in_the_message(client):
    err = error(
        client.post("/v1/classify", json={"model": "m", "texts": ["a"] * 5}), 400, "limit_exceeded"
    )
    assert "limit of 4" in err["message"]


def test_malformed_json_is_400(client):
    r = client.post(
        "/v1/classify",
        content=b'{"model": "tiny", "texts": [',
        headers={"content-type": "application/json"},
    )
    error(r, 400, "invalid_json")


def test_body_over_the_limit_is_413_from_content_length(client):
    r = client.post("/v1/classify", json={"model": "tiny", "texts": ["x" * 3000]})
    assert "limit of 2048 bytes" in error(r, 413, "payload_too_large")["message"]


def test_streamed_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"model": "tiny", "texts": ["'
        for _ in range(10):
            yield b"x" * 500
        yield b'"]}'

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    error(r, 413, "payload_too_large")


def test_unknown_route_and_method_use_the_error_shape(client):
    error(client.get("/v1/nothing"), 404, "not_found")
    not_allowed = client.get("/v1/classify")
    error(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "POST"


def test_the_openapi_document_declares_the_bearer_scheme_and_every_status(keyed, client):
    doc = keyed.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the gateway's API keys (FNB_API_KEYS).",
    }
    classify = doc["paths"]["/v1/classify"]["post"]
    assert classify["security"] == [{"bearer": []}]
    assert {"400", "401", "404", "408", "413", "422", "503"} <= set(classify["responses"])
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for status in ("400", "422", "503"):
        assert classify["responses"][status]["content"]["application/json"]["schema"] == error_ref
    assert "HTTPValidationError" not in str(doc)
    assert doc["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    # Without keys no route asks for them, and none answers 401.
    open_doc = client.get("/openapi.json").json()
    assert "security" not in open_doc["paths"]["/v1/classify"]["post"]
    assert "401" not in open_doc["paths"]["/v1/classify"]["post"]["responses"]


def test_keys_are_required_on_v1_only(keyed):
    assert keyed.get("/healthz").status_code == 200
    error(keyed.get("/v1/models"), 401, "unauthorized")
    error(keyed.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    error(keyed.get("/v1/models", headers={"Authorization": f"Basic {KEY}"}), 401, "unauthorized")
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert keyed.get("/v1/models", headers={"Authorization": f"bearer {OTHER}"}).status_code == 200


def test_more_than_one_authorization_header_is_refused(keyed):
    for pair in (["Bearer wrong", f"Bearer {KEY}"], [f"Bearer {KEY}", f"Bearer {KEY}"]):
        headers = [("Authorization", value) for value in pair]
        error(keyed.get("/v1/models", headers=headers), 401, "unauthorized")


def test_readyz_tells_a_stranger_only_ready_or_not(keyed):
    anonymous = keyed.get("/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    wrong = keyed.get("/readyz", headers={"Authorization": "Bearer wrong"})
    assert wrong.json() == {"status": "ready"}
    full = keyed.get("/readyz", headers={"Authorization": f"Bearer {KEY}"})
    assert full.json() == {"status": "ready", "models": {}}


def test_readyz_without_keys_shows_the_models(client):
    assert client.get("/readyz").json() == {"status": "ready", "models": {}}


def test_auth_is_checked_before_the_body_is_read(keyed):
    # Without a key, an oversized (or malformed) body is never looked at: 401, not 413/400.
    r = keyed.post(
        "/v1/classify", content=b"x" * 10_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_cors_preflight_allows_configured_origins(tmp_path):
    settings = Settings(store=tmp_path, cors_origins=["https://app.example"], api_keys=[KEY])
    with TestClient(create_app(settings, jobs=False)) as c:
        r = c.options(
            "/v1/classify",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options(
            "/v1/classify",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers


def test_a_request_cancelled_at_the_end_of_a_shutdown_answers_503():
    """uvicorn cancels what still runs when its graceful shutdown ends: the client reads a
    503 it may retry, not a 500."""
    started = asyncio.Event()

    async def slow_route(scope, receive, send):
        started.set()
        await asyncio.sleep(3600)  # seconds: far beyond any shutdown

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario():
        guard = GuardMiddleware(slow_route, api_keys=[], max_body_bytes=1024, body_timeout_s=5)
        scope = {"type": "http", "path": "/v1/classify", "method": "POST", "headers": []}
        task = asyncio.create_task(guard(scope, receive, send))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sent[0]["status"] == 503
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["type"] == "unavailable"


def openai_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and "Traceback" not in response.text
    return body["error"]


def test_the_embeddings_route_answers_errors_in_openais_shape(client):
    missing = client.post("/v1/embeddings", json={"model": "nothing", "input": "hi"})
    error = openai_error(missing, 404, "not_found")
    assert error["type"] == "invalid_request_error" and error["param"] == "model"
    bad = client.post("/v1/embeddings", json={"model": "nothing", "input": [1.5]})
    assert openai_error(bad, 422, "validation_error")["param"].startswith("input")
    malformed = client.post(
        "/v1/embeddings", content=b"{", headers={"content-type": "application/json"}
    )
    openai_error(malformed, 400, "invalid_json")
    wrong_method = client.get("/v1/embeddings")
    openai_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    ours = client.post("/v1/classify", json={"model": "nothing", "texts": ["hi"]})
    assert set(error_shape := ours.json()["error"]) >= {"type", "message"}
    assert "param" not in error_shape and error_shape["type"] == "not_found"


def test_models_list_shows_each_task_with_its_own_fields(tmp_path):
    from fnbundle.store import Store

    from tests.unit.tiny_onnx import publish_tiny, publish_tiny_embedder

    store = Store(tmp_path)
    classifier = publish_tiny(store, "tiny")
    embedder = publish_tiny_embedder(store, "tiny-embed")
    with TestClient(create_app(Settings(store=tmp_path), jobs=False)) as c:
        for _ in range(600):  # the preloads run in the background
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert models[classifier.id]["labels"] == ["negative", "positive"]
    assert models[classifier.id]["state"] == "ready" and models[classifier.id]["task"] == "classify"
    assert "labels" not in models[embedder.id]
    assert models[embedder.id]["state"] == "ready" and models[embedder.id]["task"] == "embed"
    # OpenAI's model object (client.models.list() reads it), our fields beside it.
    listed = models[classifier.id]
    assert (listed["object"], listed["owned_by"]) == ("model", "fnbundle")
    created_at = datetime.fromisoformat(listed["created_at"])
    assert listed["created"] == int(created_at.timestamp())


def test_the_openapi_document_states_the_limits_of_this_gateway(client):
    doc = client.get("/openapi.json").json()
    texts = doc["components"]["schemas"]["ClassifyRequest"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, 4)  # the fixture's max_texts
    assert texts["items"]["maxLength"] == 50
    model = doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["schema"]
    assert model["pattern"].startswith("^[a-z0-9]") and model["maxLength"] == 80


@pytest.mark.parametrize(
    ("route", "payload"),
    [("/v1/classify", {"texts": ["ok"]}), ("/v1/embeddings", {"input": "ok"})],
)
def test_an_error_quoting_non_ascii_text_reads_the_same_in_any_charset(client, route, payload):
    name = "modèle-日本"
    answer = client.post(route, json={"model": name, **payload})
    assert answer.status_code == 400, answer.text
    # The response names no charset: a client that decodes it as Latin-1 must still read
    # the model name as sent, not mojibake.
    body = json.loads(answer.content.decode("latin-1"))
    assert name in body["error"]["message"]
