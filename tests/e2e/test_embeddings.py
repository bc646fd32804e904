"""POST /v1/embeddings on a real gateway, driven by the official ``openai`` SDK.

A tiny ONNX embedder (tests/unit/tiny_onnx.py) sits in the store; the answers are compared
with the same model run in this process, and the errors are checked in OpenAI's shape,
with the statuses (and so the SDK's exception classes) users rely on.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.tasks.embed.model import load_embedder

from tests.e2e.conftest import gateway
from tests.unit.tiny_onnx import EMBED_DIMENSIONS, publish_tiny, publish_tiny_embedder

pytestmark = pytest.mark.e2e

KEY = "embeddings-test-key-0123456789"
TEXTS = ["good film", "the awful film", "love"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("embed-e2e"))
    publish_tiny_embedder(store, "tiny-embed")
    publish_tiny(store, "tiny-classifier")
    return store


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    with gateway(store.root, FNB_API_KEYS=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def local(store):
    """The same model in this process: what the gateway's vectors must equal."""
    return load_embedder("tiny-embed", Settings(store=store.root))


def test_a_string_gets_one_vector_equal_to_the_model_run_in_process(client, local):
    response = client.embeddings.create(model="tiny-embed", input="good film")
    assert len(response.data) == 1 and response.data[0].index == 0
    vector = np.array(response.data[0].embedding)
    assert vector.shape == (EMBED_DIMENSIONS,)
    np.testing.assert_allclose(vector, local.embed(["good film"])[0], atol=1e-6)
    assert response.model == local.model_id
    assert response.usage.prompt_tokens == 2 == response.usage.total_tokens


def test_a_list_keeps_its_order_and_counts_every_token(client, local):
    response = client.embeddings.create(model="tiny-embed", input=TEXTS)
    assert [d.index for d in response.data] == [0, 1, 2]
    got = np.array([d.embedding for d in response.data])
    np.testing.assert_allclose(got, local.embed(TEXTS), atol=1e-6)
    assert response.usage.prompt_tokens == 2 + 3 + 1


def test_token_arrays_are_fed_as_they_are(client, local):
    ids = local.tokenize(TEXTS)
    response = client.embeddings.create(model="tiny-embed", input=ids)
    got = np.array([d.embedding for d in response.data])
    np.testing.assert_allclose(got, local.embed(TEXTS), atol=1e-6)
    single = client.embeddings.create(model="tiny-embed", input=ids[0])
    np.testing.assert_allclose(single.data[0].embedding, got[0], atol=1e-6)


def test_base64_vectors_are_the_little_endian_float32_bytes(client, local, url):
    raw = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "tiny-embed", "input": TEXTS, "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert raw.status_code == 200, raw.text
    decoded = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw.json()["data"]
    ]
    np.testing.assert_allclose(np.array(decoded), local.embed(TEXTS), atol=1e-6)
    # The SDK asks for base64 itself when encoding_format is left out, and decodes it.
    sdk = client.embeddings.create(model="tiny-embed", input=TEXTS)
    np.testing.assert_allclose(np.array([d.embedding for d in sdk.data]), decoded, atol=0)


def openai_error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_unknown_model_is_a_404_in_openais_shape(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-model", input="good film")
    error = openai_error(caught.value)
    assert error["type"] == "invalid_request_error" and error["code"] == "not_found"
    assert "no-such-model" in error["message"]


def test_a_classifier_is_not_an_embedding_model(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny-classifier", input="good film")
    error = openai_error(caught.value)
    assert error["param"] == "model" and "not an embedding model" in error["message"]


def test_a_bad_type_is_a_422_naming_the_field(client):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model="tiny-embed", input=[1.5])  # type: ignore[list-item]
    error = openai_error(caught.value)
    assert error["param"].startswith("input") and error["code"] == "validation_error"


def test_limits_are_400s_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny-embed", input=[[2, 3, 99]])
    error = openai_error(caught.value)
    assert error["param"] == "input.0.2" and "vocabulary" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny-embed", input="good", dimensions=2)
    assert openai_error(caught.value)["param"] == "dimensions"


def test_a_missing_or_wrong_key_is_a_401(url):
    for key in ("", "wrong-key-0123456789-abcdef"):
        anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key=key or "x", max_retries=0)
        if not key:  # no Authorization header at all
            anonymous = anonymous.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as caught:
            anonymous.embeddings.create(model="tiny-embed", input="good film")
        # Refused before any route runs, still in OpenAI's shape on an OpenAI route.
        error = openai_error(caught.value)
        assert error["code"] == "unauthorized" and "API key" in error["message"]


def test_a_body_over_the_limit_is_a_413_in_openais_shape(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="tiny-embed", input="word " * 300_000)  # ~1.5 MB
    assert caught.value.status_code == 413
    error = openai_error(caught.value)
    assert error["code"] == "payload_too_large" and "limit" in error["message"]


def test_the_classify_route_keeps_its_own_error_shape(url):
    r = httpx.post(
        f"{url}/v1/classify",
        json={"model": "no-such-model", "texts": ["good"]},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 404 and set(r.json()["error"]) == {"type", "message", "field"}
