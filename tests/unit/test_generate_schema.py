"""The generate task's request schemas, limits, chunks and model names, without a model.

What a client sends is checked here the way the routes check it: pydantic's 422s for
wrong types and roles, :func:`check_request`'s 400s for limits and for fields the server
cannot honour; the chunks are OpenAI's; a request's ``model`` resolves to a base and an
adapter in a store of hand-written manifests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fnbundle.contract import parse
from fnbundle.errors import ArtifactCorrupt, FnbError, InvalidRequest, NotFound
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store
from fnbundle.tasks.generate.responses import ChunkWriter, Output, build_response
from fnbundle.tasks.generate.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateLimits,
    check_request,
    template_messages,
)
from fnbundle.tasks.generate.targets import AdapterLoader, resolve_target

pytestmark = pytest.mark.unit

LIMITS = GenerateLimits(max_n=8, max_stop=4, max_prompts=3)
HI = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return parse(ChatCompletionRequest, {"model": "m", "messages": HI, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return parse(CompletionRequest, {"model": "m", **fields})


def refused(request: Any) -> FnbError:
    with pytest.raises(FnbError) as caught:
        check_request(request, LIMITS)
    return caught.value


# --- what passes -------------------------------------------------------------------------
def test_the_fields_people_use_pass_and_unknown_ones_are_ignored():
    request = chat(
        max_tokens=5,
        temperature=0,
        top_p=0.9,
        stop="\n",
        seed=3,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        user="u1",
        metadata={"a": "b"},  # a field this server does not know: ignored, as vLLM does
        logprobs=False,  # known, unsupported, but asking for nothing
        tools=[],
        frequency_penalty=0,
        response_format={"type": "text"},
    )
    check_request(request, LIMITS)
    assert request.stops() == ("\n",) and request.include_usage() and request.new_tokens() == 5


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=5, max_completion_tokens=9).new_tokens() == 9
    assert chat().new_tokens() is None


def test_developer_is_sent_as_system_and_text_parts_are_joined():
    request = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "ok", "name": "bot"},
        ]
    )
    assert template_messages(request) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok"},
    ]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("one", ["one"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_a_prompt_is_a_text_a_list_or_token_ids(prompt, expected):
    request = completion(prompt=prompt)
    check_request(request, LIMITS)
    assert request.prompts() == expected


# --- 422: types and roles ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
        ({"messages": []}, "messages"),
        ({"temperature": 2.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": "2"}, "n"),
        ({"seed": 1.5}, "seed"),
        ({"stop": 3}, "stop"),
        ({"model": None}, "model"),
    ],
)
def test_wrong_types_and_roles_are_422_naming_the_field(fields, field):
    with pytest.raises(FnbError) as caught:
        chat(**fields)
    assert (caught.value.status, caught.value.field) == (422, field)


def test_a_token_array_holds_token_ids():
    with pytest.raises(FnbError) as caught:
        completion(prompt=[1, -2])
    assert caught.value.status == 422


# --- 400: limits and fields the server cannot honour ---------------------------------------
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"n": 9}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["a", ""]}, "stop.1"),
        ({"stop": "x" * 201}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ],
)
def test_limits_and_unsupported_fields_are_400_naming_the_field(fields, field):
    error = refused(chat(**fields))
    assert (error.status, error.field) == (400, field)
    assert error.message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["ok", ""]}, "prompt.1"),
        ({"prompt": ["a", "b", "c", "d"]}, "prompt"),
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "suffix": "end"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "logprobs": 2}, "logprobs"),
    ],
)
def test_completions_limits_are_400(fields, field):
    error = refused(completion(**fields))
    assert (error.status, error.field) == (400, field)


def test_best_of_equal_to_n_asks_for_nothing():
    check_request(completion(prompt="x", n=2, best_of=2), LIMITS)


def test_limits_come_from_the_settings():
    settings = Settings(generate_max_n=2, generate_max_stop=1, generate_max_prompts=5)
    limits = GenerateLimits.from_settings(settings)
    assert limits == GenerateLimits(max_n=2, max_stop=1, max_prompts=5)
    assert check_request(chat(n=2, stop="a"), limits) is None
    with pytest.raises(FnbError):
        check_request(chat(n=3), limits)


# --- responses and chunks ------------------------------------------------------------------
def test_a_response_counts_the_prompt_once_and_every_choice():
    outputs = [Output("a", 3, "length"), Output("b", 1, "stop")]
    response = build_response(chat(model="tiny:lora", n=2), outputs, prompt_tokens=7)
    body = response.model_dump(mode="json")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny:lora" and isinstance(body["created"], int)
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert [c["message"] for c in body["choices"]] == [
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "stop"]
    plain = build_response(completion(prompt="x"), outputs[:1], 2).model_dump(mode="json")
    assert plain["object"] == "text_completion" and plain["choices"][0]["text"] == "a"


def test_chat_chunks_name_the_role_first_and_usage_last():
    writer = ChunkWriter(chat(stream=True, stream_options={"include_usage": True}))
    start, text = writer.start(0), writer.text(0, "Hi")
    finish, usage = writer.finish(0, "stop"), writer.usage(5, 2)
    assert start is not None and start["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
    }
    assert text["choices"][0]["delta"] == {"content": "Hi"} and text["usage"] is None
    assert finish["choices"][0] == {
        "index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None
    }  # fmt: skip
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7
    assert len({c["id"] for c in (start, text, finish, usage)}) == 1
    assert {c["object"] for c in (start, text, finish)} == {"chat.completion.chunk"}
    json.dumps([start, text, finish, usage])  # plain JSON, on every runtime


def test_completion_chunks_have_text_and_no_usage_key_unless_asked():
    writer = ChunkWriter(completion(prompt="x", stream=True))
    assert writer.start(0) is None
    chunk = writer.text(1, "ab")
    assert chunk["object"] == "text_completion" and "usage" not in chunk
    assert chunk["choices"] == [{"index": 1, "text": "ab", "finish_reason": None, "logprobs": None}]


# --- which base and adapter a model name means ---------------------------------------------
def publish(store: Store, name: str, **manifest: Any) -> Artifact:
    with store.staging(name) as staged:
        for file in manifest.pop("files", ["config.json"]):
            (staged / file).write_text("{}")
        return store.publish(staged, {"name": name, "task": "generate", **manifest})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def adapter_of(store: Store, base: Artifact, name: str = "lora") -> Artifact:
    files = ["adapter_config.json", "adapter_model.safetensors"]
    return publish(store, name, kind="adapter", base={"id": base.id}, files=files)


def test_a_name_resolves_to_a_base_or_an_adapter_on_its_base(store: Store):
    base = publish(store, "llm", kind="base")
    adapter = adapter_of(store, base)
    assert resolve_target("llm", store.resolve).base.id == base.id
    target = resolve_target("lora", store.resolve)
    assert (target.base.id, target.adapter and target.adapter.id) == (base.id, adapter.id)
    both = resolve_target(f"llm:{adapter.id}", store.resolve)
    assert (both.base.id, both.adapter and both.adapter.id) == (base.id, adapter.id)


def test_a_new_adapter_version_is_what_the_name_means_next(store: Store):
    base = publish(store, "llm", kind="base")
    adapter_of(store, base)
    newer = adapter_of(store, base)
    target = resolve_target("lora", store.resolve)
    assert target.adapter is not None and target.adapter.id == newer.id


def test_wrong_names_are_clear_errors(store: Store):
    base = publish(store, "llm", kind="base")
    other = publish(store, "llm2", kind="base")
    adapter_of(store, base)
    classifier = publish(store, "sentiment", task="classify")
    cases: list[tuple[str, type[FnbError]]] = [
        ("nope", NotFound),
        ("llm:nope", NotFound),
        ("llm:lora:x", InvalidRequest),
        ("llm:llm2", InvalidRequest),  # a base where the adapter goes
        ("lora:lora", InvalidRequest),  # an adapter where the base goes
        ("llm2:lora", InvalidRequest),  # trained on another base
        ("sentiment", InvalidRequest),
        ("../x", InvalidRequest),
    ]
    for ref, error in cases:
        with pytest.raises(error) as caught:
            resolve_target(ref, store.resolve)
        assert caught.value.field == "model", ref
    assert other.id and classifier.id


def test_an_adapter_whose_base_is_gone_cannot_serve(store: Store):
    base = publish(store, "llm", kind="base")
    adapter_of(store, base)
    shutil.rmtree(base.path)
    with pytest.raises(ArtifactCorrupt, match="not in the store"):
        resolve_target("lora", store.resolve)


class RecordingEngine:
    def __init__(self) -> None:
        self.added: list[tuple[str, Path]] = []

    def has_adapter(self, name: str) -> bool:
        return any(n == name for n, _ in self.added)

    def add_adapter(self, name: str, folder: Path) -> None:
        self.added.append((name, folder))


def test_an_adapter_is_hash_checked_and_added_once_under_its_version_id(store: Store):
    base = publish(store, "llm", kind="base")
    adapter = adapter_of(store, base)
    engine, loader = RecordingEngine(), AdapterLoader()
    loader.ensure(engine, adapter, store)
    loader.ensure(engine, adapter, store)
    assert engine.added == [(adapter.id, adapter.path)]
    newer = adapter_of(store, base)
    (newer.path / "adapter_model.safetensors").write_text("[]")  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        loader.ensure(engine, newer, store)
    assert len(engine.added) == 1


# --- importing a base ------------------------------------------------------------------------
def test_a_base_needing_remote_code_pickle_or_not_a_causal_lm_is_refused(tmp_path: Path):
    from fnbundle.errors import UnsafeArtifact
    from fnbundle.tasks import REGISTRY

    task = REGISTRY.serving_task("generate")
    settings = Settings(store=tmp_path / "store", data_roots=[tmp_path])
    folders = {
        "remote": {"auto_map": {"AutoModelForCausalLM": "x.Model"}},
        "pickled": {"architectures": ["LlamaForCausalLM"]},
        "encoder": {"architectures": ["BertModel"]},
    }
    for name, config in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        weights = "pytorch_model.bin" if name == "pickled" else "model.safetensors"
        (tmp_path / name / weights).write_bytes(b"\x80")
    with pytest.raises(UnsafeArtifact, match="trust_remote_code"):
        task.import_base(str(tmp_path / "remote"), "llm", settings)
    with pytest.raises(UnsafeArtifact, match="pickle"):
        task.import_base(str(tmp_path / "pickled"), "llm", settings)
    with pytest.raises(InvalidRequest, match="not a causal language model"):
        task.import_base(str(tmp_path / "encoder"), "llm", settings)
    with pytest.raises(InvalidRequest, match="outside the allowed roots"):
        task.import_base("/etc", "llm", settings)
    assert not Store(settings.store_root).list()


# --- the event stream ------------------------------------------------------------------------
def test_an_error_after_the_stream_started_is_one_more_event_before_done():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from fnbundle.api.streaming import EventStream
    from fnbundle.errors import LimitExceeded

    async def chunks():
        yield {"choices": [{"index": 0, "text": "é"}]}
        raise LimitExceeded("The engine ran out of room.", field="max_tokens")

    app = FastAPI()
    app.get("/s")(lambda: EventStream(chunks(), openai_errors=True))
    with TestClient(app) as client:
        response = client.get("/s")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert [e[:6] for e in events] == ["data: "] * 3 and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["text"] == "é"
    assert json.loads(events[1][6:]) == {
        "error": {
            "message": "The engine ran out of room.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "limit_exceeded",
        }
    }
