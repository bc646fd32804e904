"""The OpenAI-compatible generation routes through the official ``openai`` SDK, against a
real uvicorn on 127.0.0.1 serving the tiny Llama imported into a temporary store (with
``fnbundle models import``) and two versions of a LoRA adapter trained on nothing (random
LoRA weights: they change what the model says, which is all these tests need).

The suite is the engines' conformance suite: every test runs once per served backend,
``transformers`` here and ``vllm`` on a GPU machine with vLLM installed (marked ``gpu``).
A random-init model rarely emits its end token, so ``stop`` is tested with a piece of what
greedy decoding says, and ``length`` with ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fnbundle.api import create_app
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store

from tests.conftest import free_port
from tests.e2e.conftest import import_llm

pytestmark = pytest.mark.e2e

KEY = "generate-e2e-key-0123456789abcdef"
BASE = "tiny-llm"
ADAPTER = "tiny-lora"
CONTEXT = 512  # tokens: the tiny Llama's max_position_embeddings
HI = [{"role": "user", "content": "Is this blender any good?"}]


def _vllm_ready() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


BACKENDS = [
    "transformers",
    pytest.param(
        "vllm",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not _vllm_ready(), reason="needs CUDA and vllm"),
        ],
    ),
]


# --- the store: a base imported by the CLI, an adapter published in two versions -----------
def make_adapter(base: Path, folder: Path, seed: int) -> Path:
    """A PEFT LoRA folder for ``base`` whose weights are random (not the usual zero B)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def publish_adapter(store: Store, base: Artifact, folder: Path) -> Artifact:
    """``folder`` as a ``generate`` adapter artifact of ``base``, in the agreed format."""
    with store.staging(ADAPTER) as staged:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(folder / name, staged / name)
        manifest = {
            "name": ADAPTER,
            "task": "generate",
            "kind": "adapter",
            "base": {"id": base.id, "source": base.manifest["source"], "revision": None},
            "base_model": base.id,
            "lora": {"r": 4, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "metrics": {},
        }
        return store.publish(staged, manifest)


@pytest.fixture(scope="module")
def llm_store(tmp_path_factory: pytest.TempPathFactory, tiny_llm_base: Path) -> Path:
    root = tmp_path_factory.mktemp("llm-store")
    imported = import_llm(root, tiny_llm_base, BASE)
    assert f"published {BASE}-" in imported.stdout
    store = Store(root)
    base = store.resolve(BASE)
    assert base.manifest["kind"] == "base" and base.manifest["context_length"] == CONTEXT
    folder = make_adapter(tiny_llm_base, tmp_path_factory.mktemp("adapter-v1"), seed=1)
    publish_adapter(store, base, folder)
    return root


# --- the gateway ---------------------------------------------------------------------------
@dataclass
class Served:
    url: str
    app: Any
    backend: str

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=60)

    def engine(self) -> Any:
        host = self.app.state.host
        (key,) = [k for k in host.loaded() if k[0].startswith(f"{BASE}-")]
        return host.load_sync(_generate_task(), key[0], key[1])


def _generate_task() -> Any:
    from fnbundle.tasks import REGISTRY

    return REGISTRY.serving_task("generate")


@contextmanager
def uvicorn_thread(app: Any) -> Iterator[str]:
    """``app`` (lifespan included) on a real uvicorn on 127.0.0.1 in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, llm_store: Path) -> Iterator[Served]:
    settings = Settings(
        store=llm_store,
        data_roots=[llm_store],
        api_keys=[KEY],
        preload=[BASE],
        generate_backend=request.param,
        threads=1,
    )
    app = create_app(settings, jobs=False)
    with uvicorn_thread(app) as url:
        yield Served(url, app, request.param)


def greedy(served: Served, model: str = BASE, max_tokens: int = 12, **extra: Any) -> str:
    response = served.client().chat.completions.create(
        model=model, messages=HI, max_tokens=max_tokens, temperature=0, **extra
    )
    return response.choices[0].message.content or ""


# --- answers -------------------------------------------------------------------------------
def test_models_list_is_openai_shaped_with_our_fields(served: Served) -> None:
    client = served.client()
    models = {m.id: m for m in client.models.list()}
    base = next(m for m in models.values() if m.id.startswith(f"{BASE}-"))
    assert base.object == "model" and base.owned_by == "fnbundle"
    assert isinstance(base.created, int) and base.created > 1_700_000_000
    extra = base.model_extra or {}
    assert extra["kind"] == "base" and extra["context_length"] == CONTEXT
    assert extra["state"] == "ready" and extra["created_at"].startswith("20")
    adapter = next(m for m in models.values() if m.id.startswith(f"{ADAPTER}-"))
    assert (adapter.model_extra or {})["base"] == base.id
    one = client.models.retrieve(BASE)
    assert one.id == base.id and one.object == "model" and one.owned_by == "fnbundle"


def test_chat_completion_stops_at_max_tokens_with_usage(served: Served) -> None:
    response = served.client().chat.completions.create(
        model=BASE, messages=HI, max_tokens=5, temperature=0, user="someone", extra_body={"x": 1}
    )
    assert response.id.startswith("chatcmpl-") and response.object == "chat.completion"
    assert response.model == BASE and abs(response.created - time.time()) < 120
    (choice,) = response.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and choice.message.content
    usage = response.usage
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + 5


def test_a_stop_string_ends_the_completion_before_it(served: Served) -> None:
    text = greedy(served, max_tokens=16)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    response = served.client().chat.completions.create(
        model=BASE, messages=HI, max_tokens=16, temperature=0, stop=[stop, "never-said-xyz"]
    )
    (choice,) = response.choices
    assert choice.finish_reason == "stop"
    assert choice.message.content == text[: text.index(stop)]
    assert response.usage is not None and response.usage.completion_tokens < 16


def test_completions_take_a_prompt_a_list_and_token_ids(served: Served) -> None:
    client = served.client()
    one, two = (
        client.completions.create(model=BASE, prompt=p, max_tokens=4, temperature=0)
        for p in ("The blender", "Broke after")
    )
    assert one.object == "text_completion" and one.id.startswith("cmpl-")
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 4
    many = client.completions.create(
        model=BASE, prompt=["The blender", "Broke after"], max_tokens=4, temperature=0, n=2
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]  # prompt i, choice j: i * n + j
    assert [c.text for c in many.choices] == [one.choices[0].text] * 2 + [two.choices[0].text] * 2
    assert many.usage.completion_tokens == 16  # a prompt is counted once, however many choices
    assert many.usage.prompt_tokens == one.usage.prompt_tokens + two.usage.prompt_tokens
    ids = client.completions.create(model=BASE, prompt=[5, 6, 7], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 3


def test_a_seed_makes_sampling_reproducible_and_choice_i_uses_seed_plus_i(
    served: Served,
) -> None:
    client = served.client()

    def sample(seed: int, n: int = 1) -> list[str]:
        response = client.chat.completions.create(
            model=BASE, messages=HI, max_tokens=12, temperature=1.0, seed=seed, n=n
        )
        assert [c.index for c in response.choices] == list(range(n))
        assert response.usage is not None and response.usage.completion_tokens == 12 * n
        return [c.message.content or "" for c in response.choices]

    first = sample(7, n=3)
    assert sample(7, n=3) == first
    assert sample(8) == [first[1]] and sample(9) == [first[2]]
    assert len(set(first)) > 1  # three seeds, not one sample copied


def test_chat_stream_sends_role_text_finish_and_usage_then_done(served: Served) -> None:
    text = greedy(served, max_tokens=8)
    stream = served.client().chat.completions.create(
        model=BASE,
        messages=HI,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == BASE for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert content == text and reasons[-1] == "length" and reasons.count("length") == 1
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_stream_with_n_counts_every_choice(served: Served) -> None:
    stream = served.client().completions.create(
        model=BASE,
        prompt="Arrived late",
        max_tokens=6,
        temperature=0.8,
        seed=3,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    finished = {}
    usage = None
    for chunk in stream:
        assert chunk.object == "text_completion"
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert finished == {0: "length", 1: "length"} and all(texts.values())
    assert usage is not None and usage.completion_tokens == 12


def test_raw_stream_is_server_sent_events_ending_in_done(served: Served) -> None:
    body = {"model": BASE, "prompt": "Lovely", "max_tokens": 3, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{served.url}/v1/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])


# --- adapters --------------------------------------------------------------------------------
def test_an_adapter_is_served_on_its_base_and_a_new_version_is_used_at_once(
    served: Served, llm_store: Path, tmp_path: Path, tiny_llm_base: Path
) -> None:
    base_text = greedy(served)
    adapter_text = greedy(served, model=ADAPTER)
    assert adapter_text != base_text  # the LoRA weights change what the model says
    assert greedy(served, model=f"{BASE}:{ADAPTER}") == adapter_text
    response = served.client().chat.completions.create(
        model=f"{BASE}:{ADAPTER}", messages=HI, max_tokens=2
    )
    assert response.model == f"{BASE}:{ADAPTER}"  # the name the client sent
    store = Store(llm_store)
    first = store.resolve(ADAPTER)
    if served.backend == "transformers":
        assert served.engine().has_adapter(first.id)
    second = publish_adapter(
        store, store.resolve(BASE), make_adapter(tiny_llm_base, tmp_path / "v2", seed=2)
    )
    try:
        new_text = greedy(served, model=ADAPTER)
        assert new_text not in (adapter_text, base_text)
        assert served.engine().has_adapter(second.id)
        assert greedy(served, model=first.id) == adapter_text  # the old version still serves
    finally:  # later tests (and the other backend) see version 1 as the adapter again
        shutil.rmtree(second.path)
        (store.aliases_dir / f"{ADAPTER}.json").write_text(json.dumps({"id": first.id}))


# --- errors ----------------------------------------------------------------------------------
def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_unknown_model_is_a_404(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served.client().chat.completions.create(model="no-such-llm", messages=HI)
    assert _error(caught.value)["param"] == "model"


def test_max_tokens_beyond_the_context_is_a_400_naming_the_limit(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(model=BASE, messages=HI, max_tokens=CONTEXT)
    error = _error(caught.value)
    assert error["param"] == "max_tokens" and str(CONTEXT) in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(
            model=BASE, messages=HI, max_completion_tokens=CONTEXT
        )
    assert _error(caught.value)["param"] == "max_completion_tokens"


def test_a_prompt_longer_than_the_context_is_a_400(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().completions.create(model=BASE, prompt="great value " * 400, max_tokens=1)
    error = _error(caught.value)
    assert error["param"] == "prompt" and str(CONTEXT) in error["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
        ({"messages": HI, "temperature": 2.5}, "temperature"),
        ({"messages": HI, "max_tokens": "many"}, "max_tokens"),
        ({"messages": []}, "messages"),
    ],
)
def test_bad_roles_and_types_are_a_422(served: Served, fields: dict, param: str) -> None:
    body = {"model": BASE, **fields}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        served.client().post("/chat/completions", body=body, cast_to=httpx.Response)
    assert _error(caught.value)["param"] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 9}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_limits_and_fields_we_cannot_honour_are_a_400(
    served: Served, fields: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(model=BASE, messages=HI, **fields)
    assert _error(caught.value)["param"] == param


def test_a_missing_or_wrong_key_is_a_401_in_openai_shape(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        served.client(key="wrong-key-0123456789abcdef").chat.completions.create(
            model=BASE, messages=HI
        )
    assert _error(caught.value)["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong-key-0123456789abcdef").completions.create(model=BASE, prompt="x")
    r = httpx.post(f"{served.url}/v1/completions", json={"model": BASE, "prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


# --- concurrency and clients that leave ------------------------------------------------------
def test_a_client_that_disconnects_mid_stream_frees_its_slot(served: Served) -> None:
    if served.backend != "transformers":
        pytest.skip("the running-batch counters are the transformers engine's")
    engine = served.engine()
    before = engine.tokens_generated
    body = {"model": BASE, "messages": HI, "max_tokens": 450, "stream": True, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        lines = r.iter_lines()
        data = [line for line in (next(lines) for _ in range(6)) if line.startswith("data:")]
        assert len(data) >= 2 and engine.active + engine.waiting >= 1
    deadline = time.monotonic() + 20
    while engine.active or engine.waiting:
        assert time.monotonic() < deadline, "the sequence kept its slot after the client left"
        time.sleep(0.02)
    assert engine.tokens_generated - before < 450  # it stopped, it did not run to the end


def test_a_client_that_leaves_a_non_streamed_request_frees_its_slot(served: Served) -> None:
    if served.backend != "transformers":
        pytest.skip("the running-batch counters are the transformers engine's")
    engine = served.engine()
    before = engine.tokens_generated
    body = {"model": BASE, "messages": HI, "max_tokens": 450, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=0.5)
    assert engine.tokens_generated > before  # it was generating when the client left
    deadline = time.monotonic() + 20
    while engine.active or engine.waiting:
        assert time.monotonic() < deadline, "the sequence kept its slot after the client left"
        time.sleep(0.02)
    assert engine.tokens_generated - before < 450


def test_concurrent_streams_all_finish_with_their_own_text(served: Served) -> None:
    prompts = [f"Review {i}: it {word}" for i, word in enumerate(["works", "broke", "leaks"])]
    prompts += ["Five stars", "Would not buy again", "Fine"]
    solo = [
        served.client()
        .completions.create(model=BASE, prompt=p, max_tokens=10, temperature=0)
        .choices[0]
        .text
        for p in prompts
    ]

    async def one(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, int, str | None]:
        stream = await client.completions.create(
            model=BASE,
            prompt=prompt,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, tokens, reason = "", 0, None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.text
                reason = choice.finish_reason or reason
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        return text, tokens, reason

    async def all_at_once() -> list[tuple[str, int, str | None]]:
        async with served.async_client() as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    results = asyncio.run(all_at_once())
    assert [r[1:] for r in results] == [(10, "length")] * len(prompts)
    assert [r[0] for r in results] == solo
