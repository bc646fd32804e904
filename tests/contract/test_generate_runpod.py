"""The generate worker behind the RunPod SDK's dev server (``--rp_serve_api``), in RunPod's
OpenAI-route convention and with our own bodies: each answer equals the local gateway's.

The store holds the tiny Llama imported as a user's base would be, served by the
transformers engine (the worker's vLLM path differs only in the engine; tests/gpu/ holds
it to the same references). The dev server is a real subprocess on 127.0.0.1, started once
for the module. ``--test_input`` cannot run a generator handler, hence the dev server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.runpod_openai import sse_events
from fnbundle.settings import Settings
from fnbundle.tasks.generate.base_import import import_base

from tests.conftest import REPO
from tests.contract.cases import GENERATE_CASES, GENERATE_MODEL, Case
from tests.contract.test_runpod_server import dev_server, fnb_worker_env

pytestmark = pytest.mark.contract

MODEL = GENERATE_MODEL
JOB_TIMEOUT_S = 120  # one /runsync call on two busy cores
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "The film was long but the acting was superb."}],
    "max_tokens": 12,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def store(tiny_llm_base, tmp_path_factory) -> Settings:
    """A store holding the tiny Llama as ``tiny-llm``; the settings every runtime reads."""
    settings = Settings(
        store=tmp_path_factory.mktemp("generate-store"),
        data_roots=[tiny_llm_base.parent],
        generate_backend="transformers",
    )
    import_base(str(tiny_llm_base), MODEL, settings)
    return settings


@pytest.fixture(scope="module")
def gateway(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store.model_copy(update={"preload": [MODEL]}), jobs=False)) as c:
        yield c


@pytest.fixture(scope="module")
def runsync(store: Settings, tmp_path_factory) -> Iterator[Any]:
    """``runsync(input)``: the dev server's answer to one job (its ``output`` list)."""
    env = fnb_worker_env(
        FNB_STORE=str(store.store_root),
        FNB_DATA_ROOTS=",".join(str(root) for root in store.data_roots),
        FNB_PRELOAD=MODEL,
        FNB_GENERATE_BACKEND="transformers",
        HF_HUB_OFFLINE="1",
    )
    log = tmp_path_factory.mktemp("generate-dev-server") / "server.log"
    with dev_server("generate", env, log) as base:

        def call(job_input: dict[str, Any]) -> Any:
            answer = httpx.post(f"{base}/runsync", json={"input": job_input}, timeout=JOB_TIMEOUT_S)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["status"] == "COMPLETED", (body, log.read_text(errors="replace")[-3000:])
            return body["output"]

        yield call


def chunks_of(sse_text: str) -> list[Any]:
    events, rest = sse_events(sse_text)
    assert rest == "" and events[-1] == "[DONE]", sse_text[-500:]
    return [json.loads(data) for data in events[:-1]]


def same(body: dict[str, Any], expected: dict[str, Any]) -> None:
    """Bodies equal but for what differs per request (id, time)."""
    for volatile in ("id", "created"):
        body.pop(volatile, None)
        expected.pop(volatile, None)
    assert body == expected


@pytest.mark.parametrize("case", GENERATE_CASES, ids=lambda c: c.name)
def test_every_case_through_the_openai_route_answers_as_the_gateway(case: Case, runsync, gateway):
    [body] = runsync({"openai_route": "/v1/chat/completions", "openai_input": case.payload})
    expected = gateway.post("/v1/chat/completions", json=case.payload)
    assert expected.status_code == case.status
    same(body, expected.json())
    if case.status != 200:
        assert (body["error"]["code"], body["error"]["param"]) == (case.error_type, case.field)


def test_openai_route_chat_answers_as_the_gateway(runsync, gateway):
    output = runsync({"openai_route": "/v1/chat/completions", "openai_input": CHAT})
    expected = gateway.post("/v1/chat/completions", json=CHAT)
    assert expected.status_code == 200
    [body] = output
    assert body["object"] == "chat.completion" and body["model"].startswith(MODEL)
    assert body["usage"]["completion_tokens"] > 0
    same(body, expected.json())


def test_openai_route_chat_streams_server_sent_events(runsync, gateway):
    output = runsync(
        {"openai_route": "/v1/chat/completions", "openai_input": {**CHAT, "stream": True}}
    )
    assert all(isinstance(chunk, str) for chunk in output)  # SSE text, as RunPod relays it
    chunks = chunks_of("".join(output))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    whole = gateway.post("/v1/chat/completions", json=CHAT).json()
    assert text == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"]


def test_openai_route_models_lists_the_store(runsync, gateway):
    [body] = runsync({"openai_route": "/v1/models"})
    assert body == gateway.get("/v1/models").json()
    assert MODEL in {m.get("name", m["id"]) for m in body["data"]} or any(
        m["id"].startswith(MODEL) for m in body["data"]
    )


def test_openai_route_errors_are_openai_error_bodies(runsync, gateway):
    missing = {**CHAT, "model": "no-such-model"}
    [body] = runsync({"openai_route": "/v1/chat/completions", "openai_input": missing})
    expected = gateway.post("/v1/chat/completions", json=missing)
    assert expected.status_code == 404 and body == expected.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}

    [body] = runsync({"openai_route": "/v1/embeddings", "openai_input": CHAT})
    assert body["error"]["param"] == "openai_route" and "served:" in body["error"]["message"]


def test_our_own_body_answers_the_task_route(runsync, gateway):
    [body] = runsync(CHAT)
    same(body, gateway.post("/v1/chat/completions", json=CHAT).json())
    # Streamed: each chunk's JSON object, [DONE] left out.
    chunks = runsync({**CHAT, "stream": True})
    assert chunks and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    # An error is the gateway's error object as a string, as every worker carries it.
    [error] = runsync({**CHAT, "max_tokens": -1})
    assert json.loads(error["error"])["param"] == "max_tokens"


def test_importing_the_worker_loads_nothing():
    """RunPod imports the handler before any job: no model, no torch, vLLM or runpod yet."""
    probe = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('h', {str(REPO / 'handlers' / 'generate.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "heavy = ('torch', 'transformers', 'vllm', 'onnxruntime', 'runpod')\n"
        "print(json.dumps({'heavy': sorted(m for m in sys.modules if m.split('.')[0] in heavy),"
        " 'app': module.worker.app is not None, 'handler': callable(module.handler)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "heavy": [],
        "app": False,
        "handler": True,
    }
