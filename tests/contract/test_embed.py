"""``embed`` on every runtime: the gateway, Modal's ``.local()`` and the RunPod handler
(called as a function and run as the SDK's ``--test_input`` worker) answer each fixture of
:data:`~tests.contract.cases.EMBED_CASES` with the same body, errors in OpenAI's shape.

Only Modal's and RunPod's clouds are out of reach; the apps, the handler, the SDK's local
job runner and the gateway are real, over a tiny ONNX embedder in a temporary store.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.settings import Settings
from fnbundle.store import Store

from tests.conftest import REPO
from tests.contract.cases import EMBED_CASES, EMBED_MODEL, Case, check_embed_body, normalize
from tests.contract.test_runpod import decode, load_handler, run_test_input
from tests.unit.tiny_onnx import publish_tiny_embedder

pytestmark = [
    pytest.mark.contract,
    pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning"),
]


@pytest.fixture(scope="module")
def embed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embed-store")
    publish_tiny_embedder(Store(root), EMBED_MODEL)
    return root


@pytest.fixture
def embed_env(embed_store: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FNB_STORE", str(embed_store))
    monkeypatch.setenv("FNB_PRELOAD", EMBED_MODEL)
    for name in ("FNB_API_KEYS", "FNB_MAX_TEXTS", "FNB_MAX_BODY_BYTES", "FNB_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return Settings()


@pytest.fixture
def gateway_bodies(embed_env: Settings) -> dict[str, tuple[int, dict[str, Any]]]:
    with TestClient(create_app(embed_env, jobs=False)) as client:
        answers = {}
        for case in EMBED_CASES:
            response = client.post("/v1/embeddings", json=case.payload)
            answers[case.name] = (response.status_code, response.json())
    return answers


def test_gateway_answers_each_case_as_declared(gateway_bodies) -> None:
    for case in EMBED_CASES:
        status, body = gateway_bodies[case.name]
        assert status == case.status, (case.name, body)
        check_embed_body(case, body)


def test_runpod_handler_answers_like_the_gateway(gateway_bodies, embed_env) -> None:
    module = load_handler("embed")
    module.setup(embed_env)

    async def every_job() -> list[dict[str, Any]]:  # one loop, as the RunPod worker has
        return [await module.handler({"id": c.name, "input": c.payload}) for c in EMBED_CASES]

    for case, output in zip(EMBED_CASES, asyncio.run(every_job()), strict=True):
        body = decode(output)
        check_embed_body(case, body)
        assert normalize(body) == normalize(gateway_bodies[case.name][1]), case.name


@pytest.fixture
def modal_embedder(embed_env: Settings) -> Iterator[Any]:
    sys.path.insert(0, str(REPO))  # functions/ is a folder of app files, imported by path
    try:
        from functions.embed import Embedder

        yield Embedder()
    finally:
        sys.path.remove(str(REPO))


@pytest.mark.parametrize("case", EMBED_CASES, ids=lambda c: c.name)
def test_modal_method_answers_like_the_gateway(case: Case, gateway_bodies, modal_embedder) -> None:
    body = modal_embedder.embed.local(case.payload)
    check_embed_body(case, body)
    assert normalize(body) == normalize(gateway_bodies[case.name][1])


def test_modal_web_endpoint_is_the_gateway(gateway_bodies, modal_embedder) -> None:
    with TestClient(modal_embedder.web.local()) as client:
        for case in EMBED_CASES:
            response = client.post("/v1/embeddings", json=case.payload)
            assert response.status_code == case.status, case.name
            assert normalize(response.json()) == normalize(gateway_bodies[case.name][1])


@pytest.mark.parametrize("name", ["good", "unknown_model"])
def test_runpod_test_input_worker_answers_like_the_gateway(
    name: str, gateway_bodies, embed_store: Path
) -> None:
    case = next(c for c in EMBED_CASES if c.name == name)
    env = {**os.environ, "FNB_STORE": str(embed_store), "FNB_PRELOAD": EMBED_MODEL}
    _, body = run_test_input(case.payload, "embed", env)
    assert normalize(decode(body)) == normalize(gateway_bodies[case.name][1])
