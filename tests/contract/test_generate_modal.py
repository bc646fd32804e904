"""The generate Modal app: its decorators come from deploy/endpoints.toml (the sized GPU,
the vLLM image, scale to zero, the GPU snapshot), and its web endpoint is the gateway, so
the OpenAI SDK pointed at ``<app>/v1`` works; ``chat`` answers as the route does.

Modal's cloud is the boundary: the app is imported with no token and an unreachable
server, and runs in this process through ``.local()`` on the tiny Llama with the
transformers engine (``FNB_GENERATE_BACKEND``; in a container the app's env says vllm).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.endpoints import get_endpoint, llm_env
from fnbundle.settings import Settings
from fnbundle.tasks.generate.base_import import import_base

from tests.contract.cases import GENERATE_CASES, GENERATE_MODEL, Case
from tests.contract.test_generate_runpod import same
from tests.contract.test_modal import offline_env, run_python

pytestmark = [
    pytest.mark.contract,
    pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning"),
]

MODEL = GENERATE_MODEL
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "The film was long but the acting was superb."}],
    "max_tokens": 12,
    "temperature": 0,
}

SPY = """
import json
import modal
import functions.images as images

seen = {}


def spy(owner, name):
    original = getattr(owner, name)

    def record(*args, **kwargs):
        seen.setdefault(name, []).append(kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, record)


for owner, name in [(modal.App, "cls"), (modal, "concurrent"), (modal, "asgi_app")]:
    spy(owner, name)

import functions.generate


def plain(v):
    for name in ("cpu_image", "gpu_image", "vllm_image", "volume"):
        if v is getattr(images, name):
            return name
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


print(json.dumps({name: [plain(kw) for kw in calls] for name, calls in seen.items()}))
"""


def test_decorators_come_from_endpoints_toml_and_the_sizing(tmp_path):
    endpoint = get_endpoint("generate")
    spec, sizing = endpoint.modal, endpoint.llm_gpus()
    assert sizing is not None
    seen = run_python(SPY, offline_env(tmp_path))
    [cls] = seen["cls"]
    assert cls["image"] == "vllm_image" and cls["volumes"] == {"/vol": "volume"}
    assert cls["gpu"] == sizing["modal_gpu"] == (spec.gpu or sizing["cheapest_fit"]["modal"])
    assert cls["env"] == llm_env(endpoint.llm) and cls["env"]["FNB_GENERATE_BACKEND"] == "vllm"
    assert (cls["min_containers"], cls["scaledown_window"]) == (0, spec.scaledown_window_s)
    assert (cls["max_containers"], cls["timeout"]) == (spec.max_containers, spec.timeout_s)
    assert cls["enable_memory_snapshot"] is True
    assert cls["experimental_options"] == {"enable_gpu_snapshot": True}
    assert cls["startup_timeout"] >= 10 * 60  # a first cold start loads the weights
    assert seen["concurrent"] == [
        {"max_inputs": spec.max_inputs, "target_inputs": spec.target_inputs}
    ]
    # The last web endpoint defined is the Generator's (functions/serving.py defines one too).
    assert seen["asgi_app"][-1] == {"requires_proxy_auth": False}


@pytest.fixture(scope="module")
def store(tiny_llm_base, tmp_path_factory) -> Settings:
    settings = Settings(
        store=tmp_path_factory.mktemp("generate-modal-store"),
        data_roots=[tiny_llm_base.parent],
        generate_backend="transformers",
    )
    import_base(str(tiny_llm_base), MODEL, settings)
    return settings


@pytest.fixture(scope="module")
def generator(store: Settings) -> Iterator[tuple[Any, TestClient]]:
    """The app's class run locally (its enter hooks load the base) and its web endpoint,
    with what the container's environment would say but the transformers engine on CPU."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FNB_STORE", str(store.store_root))
        env.setenv("FNB_DATA_ROOTS", ",".join(str(root) for root in store.data_roots))
        env.setenv("FNB_PRELOAD", MODEL)
        env.setenv("FNB_GENERATE_BACKEND", "transformers")
        env.setenv("HF_HUB_OFFLINE", "1")
        env.delenv("FNB_API_KEYS", raising=False)
        from functions.generate import Generator

        instance = Generator()
        with TestClient(instance.web.local()) as client:
            yield instance, client


@pytest.fixture(scope="module")
def gateway(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store.model_copy(update={"preload": [MODEL]}), jobs=False)) as c:
        yield c


def test_the_openai_sdk_chats_with_the_web_endpoint(generator):
    from openai import OpenAI

    _, web = generator
    client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=web)
    assert web.get("/readyz").status_code == 200
    answer = client.chat.completions.create(**CHAT)
    assert answer.model.startswith(MODEL) and answer.usage and answer.usage.completion_tokens > 0
    text = answer.choices[0].message.content
    stream = client.chat.completions.create(**CHAT, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == text
    models = {m.id for m in client.models.list().data}
    assert any(m.startswith(MODEL) for m in models)


@pytest.mark.parametrize("case", GENERATE_CASES, ids=lambda c: c.name)
def test_the_chat_method_answers_as_the_gateway(case: Case, generator, gateway):
    instance, _ = generator
    body: dict[str, Any] = asyncio.run(instance.chat.local(case.payload))
    expected = gateway.post("/v1/chat/completions", json=case.payload)
    assert expected.status_code == case.status
    same(body, expected.json())
    if case.status != 200:
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert (body["error"]["code"], body["error"]["param"]) == (case.error_type, case.field)
