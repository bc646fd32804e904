"""The vLLM engine on a CUDA GPU, against the same references as the transformers engine:
each greedy sequence equals transformers' own ``generate`` for its prompt alone (text,
tokens, finish reason), alone and among concurrent sequences; a seed reproduces a sampled
sequence whatever shares its batch; stop strings, stop tokens and ``max_tokens`` end a
sequence as ours do; a closed stream is aborted and the engine keeps serving; LoRA
adapters equal PEFT's ``generate`` and share a batch with the base.

Marked ``gpu`` and skipped without CUDA or vLLM (neither exists on the development
machines); the model is the lively tiny Llama of tests/model/test_cpu_engine.py, in
float32 as its config says, so greedy choices do not flip on rounding.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.model]


def _cuda_and_vllm() -> bool:
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


if not _cuda_and_vllm():
    pytest.skip("needs a CUDA GPU and vllm", allow_module_level=True)

from fnbundle.errors import NotFound  # noqa: E402
from fnbundle.tasks.generate.engine import Sampling  # noqa: E402
from fnbundle.tasks.generate.vllm_engine import VLLMEngine  # noqa: E402

from tests.model.test_cpu_engine import (  # noqa: E402
    EOS,
    PROMPTS,
    collect,
    expected,
    greedy,
    lively_copy,
    make_adapter,
    peft_expected,
)

GPU_SHARE = 0.2  # of the card: the tiny model needs little KV cache, and tests share the GPU


@pytest.fixture(scope="module")
def lively(tiny_llm_base: Path, tmp_path_factory) -> Path:
    return lively_copy(tiny_llm_base, tmp_path_factory.mktemp("lively") / "base")


@pytest.fixture(scope="module")
def adapters(lively: Path, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(lively, root / f"a{i}", seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: vLLM's output handler belongs to the loop of the
    first request."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(lively: Path, loop):
    loaded = VLLMEngine.load(
        lively,
        model_id="tiny",
        context_length=None,
        max_batch=8,
        max_adapters=2,
        gpu_memory_utilization=GPU_SHARE,
        max_lora_rank=8,
    )
    yield loaded
    loop.run_until_complete(loaded.close())


@pytest.fixture(scope="module")
def reference(lively: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(lively, dtype=torch.float32).eval()


def chat(engine: VLLMEngine, text: str) -> list[int]:
    return engine.encode_chat([{"role": "user", "content": text}])


def test_the_engine_serves_the_models_context_and_its_chat_template(engine):
    assert engine.backend == "vllm" and engine.model_id == "tiny"
    assert engine.context_length == 512  # the tiny Llama's max_position_embeddings
    prompt = chat(engine, "hi")
    assert engine.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")


def test_one_greedy_sequence_equals_generate(engine, reference, loop):
    prompt = chat(engine, PROMPTS[1])
    got = loop.run_until_complete(collect(engine.generate(prompt, greedy(40))))
    assert got == expected(reference, engine.tokenizer, prompt, 40)
    assert got[1] > 5


def test_concurrent_sequences_each_equal_their_own_generate(engine, reference, loop):
    prompts = [chat(engine, p) for p in PROMPTS]
    lengths = [30, 12, 25, 18, 22]

    async def together():
        return await asyncio.gather(
            *(collect(engine.generate(p, greedy(n))) for p, n in zip(prompts, lengths, strict=True))
        )

    got = loop.run_until_complete(together())
    want = [
        expected(reference, engine.tokenizer, p, n) for p, n in zip(prompts, lengths, strict=True)
    ]
    assert got == want


def test_seeded_sampling_is_the_same_alone_and_in_company(engine, loop):
    prompt = chat(engine, PROMPTS[3])
    seeded = Sampling(max_tokens=30, temperature=1.0, top_p=0.95, seed=1234)
    alone = loop.run_until_complete(collect(engine.generate(prompt, seeded)))

    async def crowd():
        others = [
            collect(engine.generate(chat(engine, p), Sampling(max_tokens=30, temperature=1.0)))
            for p in PROMPTS
        ]
        return await asyncio.gather(collect(engine.generate(prompt, seeded)), *others)

    assert loop.run_until_complete(crowd())[0] == alone


def test_stop_string_stop_token_and_max_tokens(engine, reference, loop):
    prompt = chat(engine, PROMPTS[1])
    full_text, _, _ = expected(reference, engine.tokenizer, prompt, 40)
    text, tokens, reason = loop.run_until_complete(collect(engine.generate(prompt, greedy(3))))
    assert (tokens, reason) == (3, "length")
    stop = full_text[5:8]
    text, _, reason = loop.run_until_complete(
        collect(engine.generate(prompt, greedy(40, stop=(stop,))))
    )
    assert reason == "stop" and text == full_text[: full_text.index(stop)]
    first = engine.tokenizer(full_text, add_special_tokens=False)["input_ids"][0]
    _, tokens, reason = loop.run_until_complete(
        collect(engine.generate(prompt, greedy(40, stop_ids=(first, EOS))))
    )
    assert (tokens, reason) == (1, "stop")


def test_closing_a_stream_aborts_it_and_the_engine_keeps_serving(engine, reference, loop):
    prompt = chat(engine, PROMPTS[3])

    async def abandon():
        stream = engine.generate(prompt, greedy(400, stop_ids=()))
        await anext(stream)
        await stream.aclose()

    loop.run_until_complete(abandon())
    got = loop.run_until_complete(collect(engine.generate(prompt, greedy(20))))
    assert got == expected(reference, engine.tokenizer, prompt, 20)


def test_adapters_equal_peft_and_share_a_batch_with_the_base(
    engine, lively, adapters, reference, loop
):
    prompts = [chat(engine, PROMPTS[1]), chat(engine, PROMPTS[3])]
    with pytest.raises(NotFound):
        engine.generate(prompts[0], greedy(5), adapter="a0")
    engine.add_adapter("a0", adapters[0])
    engine.add_adapter("a1", adapters[1])
    assert engine.has_adapter("a0") and engine.has_adapter("a1")
    want_a0 = peft_expected(lively, adapters[0], engine.tokenizer, prompts[0], 30)
    want_a1 = peft_expected(lively, adapters[1], engine.tokenizer, prompts[1], 30)
    want_base = [expected(reference, engine.tokenizer, p, 30) for p in prompts]
    assert want_a0 != want_base[0] and want_a1 != want_base[1]

    async def mixed():
        return await asyncio.gather(
            collect(engine.generate(prompts[0], greedy(30), adapter="a0")),
            collect(engine.generate(prompts[0], greedy(30))),
            collect(engine.generate(prompts[1], greedy(30), adapter="a1")),
            collect(engine.generate(prompts[1], greedy(30))),
        )

    assert loop.run_until_complete(mixed()) == [want_a0, want_base[0], want_a1, want_base[1]]
