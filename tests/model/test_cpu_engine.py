"""The transformers engine on the tiny Llama: continuous batching against ``model.generate``.

Every greedy sequence is compared with what transformers' own ``generate`` produces for
that prompt alone (text, token count and finish reason), so the merged cache, the left
padding and the per-row positions are right whenever sequences of different lengths join
a running batch. Adapters are random non-identity LoRAs compared with ``PeftModel``'s
``generate``. Each test runs its streams in one ``asyncio.run``.

The tiny Llama as built is too quiet for that: with tied embeddings and weak layers it
repeats its last prompt token forever, whatever the context, so a broken cache would
still match. :func:`lively_copy` scales its attention and layer outputs up until each
completion depends on the whole prompt (and its byte tokens split characters).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
import torch
from fnbundle.errors import ArtifactCorrupt, LimitExceeded, ModelNotReady, NotFound
from fnbundle.tasks.generate.cpu_engine import TransformersEngine
from fnbundle.tasks.generate.detok import TextStream
from fnbundle.tasks.generate.engine import Delta, Sampling

pytestmark = pytest.mark.model

EOS = 2  # <|im_end|>
PROMPTS = [
    "hi",
    "The film was long but the acting was superb and the music stayed with me for days.",
    "Terrible plot.",
    "I would watch it again with friends, the jokes land and the ending is a surprise, "
    "although the middle drags a little and one scene felt out of place.",
    "Solid.",
]


def greedy(n: int, *, stop: tuple[str, ...] = (), stop_ids: tuple[int, ...] = (EOS,)) -> Sampling:
    return Sampling(max_tokens=n, temperature=0.0, stop=stop, stop_token_ids=stop_ids)


async def collect(stream) -> tuple[str, int, str | None]:
    """Text, tokens and finish reason of a whole stream."""
    deltas: list[Delta] = [d async for d in stream]
    assert all(d.finish_reason is None for d in deltas[:-1])
    return "".join(d.text for d in deltas), sum(d.tokens for d in deltas), deltas[-1].finish_reason


def lively_copy(base: Path, folder: Path) -> Path:
    """``base`` with sharper attention (queries and keys x10) and layers that outweigh the
    residual stream (output projections x30): its greedy text changes with any prompt token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(10)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                weight.mul_(30)
    model.save_pretrained(folder)
    for item in base.iterdir():
        if item.name.startswith(("tokenizer", "chat_template")):
            shutil.copy2(item, folder / item.name)
    return folder


@pytest.fixture(scope="module")
def lively(tiny_llm_base: Path, tmp_path_factory) -> Path:
    return lively_copy(tiny_llm_base, tmp_path_factory.mktemp("lively") / "base")


@pytest.fixture(scope="module")
def engine(lively: Path):
    loaded = TransformersEngine.load(lively, model_id="tiny", max_batch=8)
    yield loaded
    asyncio.run(loaded.close())


@pytest.fixture(scope="module")
def reference(lively: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(lively, dtype=torch.float32).eval()


def expected(model, tokenizer, prompt_ids: list[int], n: int) -> tuple[str, int, str]:
    """What ``model.generate`` greedily produces: text, tokens (eos included), finish reason."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=EOS,
            pad_token_id=0,
        )
    ids = out[0, len(prompt_ids) :].tolist()
    finish = "stop" if ids and ids[-1] == EOS else "length"
    text_ids = ids[:-1] if finish == "stop" else ids  # the eos token has no text
    text = tokenizer.decode(text_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text, len(ids), finish


def chat(engine: TransformersEngine, text: str) -> list[int]:
    return engine.encode_chat([{"role": "user", "content": text}])


def test_one_greedy_sequence_equals_generate(engine, reference):
    prompt = chat(engine, PROMPTS[1])
    got = asyncio.run(collect(engine.generate(prompt, greedy(40))))
    assert got == expected(reference, engine.tokenizer, prompt, 40)
    assert got[1] > 5

    idle_from = time.process_time()  # an idle worker sleeps: no CPU burnt between requests
    time.sleep(0.3)
    assert time.process_time() - idle_from < 0.1


def test_sequences_joining_a_running_batch_each_equal_their_own_generate(lively, reference):
    engine = TransformersEngine.load(lively, model_id="tiny", max_batch=3)
    prompts = [chat(engine, p) for p in PROMPTS]
    lengths = [30, 12, 25, 18, 22]

    async def run():
        first = engine.generate(prompts[0], greedy(lengths[0]))
        head = await anext(first)  # the first sequence is running before the others arrive

        async def rest_of_first():
            text, tokens, finish = await collect(first)
            return head.text + text, head.tokens + tokens, finish

        others = [
            collect(engine.generate(p, greedy(n)))
            for p, n in zip(prompts[1:], lengths[1:], strict=True)
        ]
        return await asyncio.gather(rest_of_first(), *others)

    try:
        results = asyncio.run(run())
    finally:
        asyncio.run(engine.close())
    for prompt, n, got in zip(prompts, lengths, results, strict=True):
        assert got == expected(reference, engine.tokenizer, prompt, n)
    assert engine.largest_batch == 3  # max_batch: two waited in the queue
    assert engine.tokens_generated == sum(tokens for _, tokens, _ in results)
    assert engine.steps < engine.tokens_generated  # rows shared forward passes
    assert engine.active == 0 and engine.waiting == 0


def test_seeded_sampling_is_the_same_alone_and_in_company(engine):
    prompt = chat(engine, PROMPTS[3])

    def sampled(seed: int | None) -> Sampling:
        return Sampling(max_tokens=25, temperature=0.9, top_p=0.9, seed=seed)

    async def company():
        others = [collect(engine.generate(chat(engine, p), sampled(None))) for p in PROMPTS[:3]]
        results = await asyncio.gather(collect(engine.generate(prompt, sampled(7))), *others)
        return results[0]

    alone = asyncio.run(collect(engine.generate(prompt, sampled(7))))
    assert asyncio.run(company()) == alone
    assert asyncio.run(collect(engine.generate(prompt, sampled(8))))[0] != alone[0]
    assert alone[1:] == (25, "length")


def test_stop_string_stop_token_and_max_tokens(engine, reference):
    prompt = chat(engine, PROMPTS[2])
    full_ids = reference.generate(
        torch.tensor([prompt]), do_sample=False, max_new_tokens=30, eos_token_id=None
    )[0, len(prompt) :].tolist()
    assert len(full_ids) == 30
    full = engine.tokenizer.decode(full_ids, skip_special_tokens=True)
    nothing = asyncio.run(collect(engine.generate(prompt, greedy(30, stop_ids=()))))
    assert nothing == (full, 30, "length")

    # A stop string from the middle of the text: the text ends just before it.
    stop = full[12:16]
    cut = full.index(stop)
    text, tokens, finish = asyncio.run(
        collect(engine.generate(prompt, greedy(30, stop=("never there", stop), stop_ids=())))
    )
    assert (text, finish) == (full[:cut], "stop")
    assert tokens < 30

    # A stop token id: generation ends at its first occurrence, its text excluded.
    at = 6
    stop_id = full_ids[at]
    first = full_ids.index(stop_id)
    expected_text = engine.tokenizer.decode(full_ids[:first], skip_special_tokens=True)
    got = asyncio.run(collect(engine.generate(prompt, greedy(30, stop_ids=(stop_id,)))))
    assert got == (expected_text, first + 1, "stop")

    assert asyncio.run(collect(engine.generate(prompt, greedy(5, stop_ids=()))))[1:] == (
        5,
        "length",
    )


def test_context_length_ends_a_sequence_and_bounds_the_prompt(engine):
    long_prompt = engine.encode("great " * 300)[: engine.context_length - 4]
    got = asyncio.run(collect(engine.generate(long_prompt, greedy(50, stop_ids=()))))
    assert got[1:] == (4, "length")
    with pytest.raises(LimitExceeded):
        engine.generate(engine.encode("great " * 600)[: engine.context_length], greedy(5))


def test_text_stream_is_exact_across_split_characters_and_holds_back_stops(engine):
    tokenizer = engine.tokenizer
    text = "naïve café 😀 — 日本語 ok ✓ end"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # characters split across byte tokens
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.finish() == text
    assert all("\ufffd" not in p for p in pieces)

    stream = TextStream(tokenizer, stops=("日本", "zz"))
    out = ""
    for i in ids:
        out += stream.push(i)
        assert not out.endswith("日")  # a possible start of a stop string is held back
        if stream.stopped:
            break
    assert stream.stopped and out == "naïve café 😀 — "


def test_closing_a_stream_frees_its_slot(lively, reference):
    engine = TransformersEngine.load(lively, model_id="tiny", max_batch=2)
    prompts = [chat(engine, p) for p in PROMPTS[:3]]

    async def run():
        doomed = engine.generate(prompts[0], greedy(400, stop_ids=()))
        for _ in range(3):
            await anext(doomed)
        survivor = asyncio.create_task(collect(engine.generate(prompts[1], greedy(60))))
        queued = asyncio.create_task(collect(engine.generate(prompts[2], greedy(20))))
        while (engine.active, engine.waiting) != (2, 1):  # the third waits: both slots taken
            await asyncio.sleep(0.002)
        await doomed.aclose()
        return await survivor, await queued

    try:
        survivor, queued = asyncio.run(run())
    finally:
        asyncio.run(engine.close())
    assert survivor == expected(reference, engine.tokenizer, prompts[1], 60)
    assert queued == expected(reference, engine.tokenizer, prompts[2], 20)
    assert engine.tokens_generated < 400  # the closed one stopped early
    assert engine.active == 0


def test_a_failing_row_ends_alone_and_close_ends_pending_streams(engine, reference):
    prompt = chat(engine, PROMPTS[1])
    broken = Sampling(max_tokens=10, temperature=float("nan"))  # softmax of NaN: no draw

    async def run():
        good = asyncio.create_task(collect(engine.generate(prompt, greedy(20))))
        with pytest.raises(RuntimeError, match="Generation failed"):
            await collect(engine.generate(prompt, broken))
        return await good

    assert asyncio.run(run()) == expected(reference, engine.tokenizer, prompt, 20)


def test_close_ends_pending_streams(lively):
    engine = TransformersEngine.load(lively, model_id="tiny", max_batch=1)
    prompt = chat(engine, PROMPTS[0])

    async def run():
        running = engine.generate(prompt, greedy(400, stop_ids=()))
        await anext(running)
        queued = asyncio.create_task(collect(engine.generate(prompt, greedy(5))))
        await asyncio.sleep(0.01)
        await engine.close()
        with pytest.raises(ModelNotReady):
            await collect(running)
        with pytest.raises(ModelNotReady):
            await queued

    asyncio.run(run())
    with pytest.raises(ModelNotReady):
        engine.generate(prompt, greedy(5))


def test_a_folder_that_is_no_model_is_corrupt(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactCorrupt):
        TransformersEngine.load(tmp_path, model_id="broken")


# ---- adapters ---------------------------------------------------------------------------


def make_adapter(base: Path, folder: Path, seed: int) -> Path:
    """A random LoRA on every projection, far from the identity (init_lora_weights=False)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(lively: Path, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(lively, root / f"a{i}", seed=i) for i in range(4)]


def peft_expected(base: Path, adapter: Path, tokenizer, prompt_ids: list[int], n: int):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return expected(PeftModel.from_pretrained(model, adapter).eval(), tokenizer, prompt_ids, n)


def test_adapter_and_base_rows_share_a_batch(lively, adapters, reference):
    engine = TransformersEngine.load(lively, model_id="tiny", max_batch=4)
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

    try:
        solo = asyncio.run(collect(engine.generate(prompts[0], greedy(30), adapter="a0")))
        together = asyncio.run(mixed())
    finally:
        asyncio.run(engine.close())
    assert solo == want_a0
    assert together == [want_a0, want_base[0], want_a1, want_base[1]]
    assert engine.largest_batch == 4


def test_least_recently_used_adapter_goes_unless_a_sequence_uses_it(lively, adapters):
    engine = TransformersEngine.load(lively, model_id="tiny", max_adapters=2)
    prompt = chat(engine, PROMPTS[0])
    engine.add_adapter("a0", adapters[0])
    engine.add_adapter("a1", adapters[1])

    async def run():
        pinned = engine.generate(prompt, greedy(400, stop_ids=()), adapter="a0")
        await anext(pinned)  # a0 is running, and now the most recently used
        engine.add_adapter("a1", adapters[1])  # already resident: a1 is the most recent now
        engine.add_adapter("a2", adapters[2])  # a0 is the oldest but in use: a1 goes
        assert [engine.has_adapter(n) for n in ("a0", "a1", "a2")] == [True, False, True]
        with pytest.raises(NotFound):
            engine.generate(prompt, greedy(5), adapter="a1")
        await pinned.aclose()
        while engine.active:
            await asyncio.sleep(0.005)
        engine.add_adapter("a3", adapters[3])  # a0 is idle now and the oldest
        assert [engine.has_adapter(n) for n in ("a0", "a2", "a3")] == [False, True, True]
        return await collect(engine.generate(prompt, greedy(5), adapter="a3"))

    try:
        assert asyncio.run(run())[1] >= 1
    finally:
        asyncio.run(engine.close())


def test_an_adapter_that_does_not_fit_is_refused_and_the_engine_keeps_serving(
    lively, adapters, tmp_path, reference
):
    wrong = shutil.copytree(adapters[0], tmp_path / "wrong")
    (wrong / "adapter_model.safetensors").write_bytes(b"not safetensors")
    engine = TransformersEngine.load(lively, model_id="tiny")
    prompt = chat(engine, PROMPTS[2])
    try:
        with pytest.raises(ArtifactCorrupt):
            engine.add_adapter("wrong", wrong)  # the first load: the base is left as it was
        assert not engine.has_adapter("wrong")
        got = asyncio.run(collect(engine.generate(prompt, greedy(20))))
        engine.add_adapter("a0", adapters[0])
        with pytest.raises(ArtifactCorrupt):
            engine.add_adapter("wrong", wrong)  # a later load: the other adapters stay
        assert engine.has_adapter("a0") and not engine.has_adapter("wrong")
        base_again = asyncio.run(collect(engine.generate(prompt, greedy(20))))
    finally:
        asyncio.run(engine.close())
    assert got == base_again == expected(reference, engine.tokenizer, prompt, 20)
