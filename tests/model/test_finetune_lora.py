"""LoRA fine-tuning on the tiny Llama: it learns what it cannot know, the loss is on the
answers alone, bad input is refused naming the line or the field, and the job runs through
the local gateway with its estimate, typed progress and a published adapter.

The learning test: 30 doors, each with a made-up password of two nonsense syllables, asked
in two phrasings (60 rows); the held-out rows are phrasings of doors whose other phrasing
is trained, so the held-out loss falls as the adapter learns, and early stopping keeps the
last epochs. Measured on this machine (rank 32, alpha 32, lr 3e-3, 40 epochs, lm_head
adapted too: the random base's tied embeddings give it logits of about +-1.3 alone): 22 of
30 passwords answered, the base 0, in ~25 s on one core.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.errors import DatasetError, InvalidRequest
from fnbundle.settings import Settings
from fnbundle.store import Store, sha256_file
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams
from fnbundle.training.lora import finetune_lora
from fnbundle.training.lora_data import IGNORE, Example, encode_example

pytestmark = pytest.mark.model

SYLLABLES = [
    "zor",
    "blat",
    "quex",
    "vim",
    "dro",
    "plin",
    "kaz",
    "tup",
    "mib",
    "frul",
    "gosh",
    "yen",
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
LEARN = {"rank": 32, "alpha": 32, "learning_rate": 3e-3, "epochs": 40, "batch_size": 4,
         "dropout": 0.0, "warmup": 0.0, "max_seq_length": 64, "patience": 0,
         "target_modules": TARGETS}  # fmt: skip
WAIT_S = 600  # seconds a job's event stream may take before the test fails


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def passwords() -> list[str]:
    rng = random.Random(7)
    words: set[str] = set()
    while len(words) < 30:
        words.add("".join(rng.sample(SYLLABLES, 2)))
    return sorted(words)


def question(door: int) -> str:
    return f"What is the password for door {door}?"


def door_rows() -> list[dict[str, Any]]:
    words = passwords()
    chat = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": w}]}
        for i, w in enumerate(words)
        for q in (question(i + 1), f"Door {i + 1}: which password opens it?")
    ]
    return chat


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def settings_for(tmp_path: Path, *bases: Path, **extra: Any) -> Settings:
    return Settings(
        store=tmp_path / "store",
        jobs_dir=tmp_path / "jobs",
        data_roots=[tmp_path, *(b.parent for b in bases)],
        threads=1,
        preload=[],
        **extra,
    )


def greedy(model: Any, tok: Any, text: str) -> str:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    out = model.generate(**ids, max_new_tokens=8, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    return str(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def test_the_adapter_learns_passwords_the_base_cannot_know(tmp_path, tiny_llm_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "doors.jsonl", door_rows())
    settings = settings_for(tmp_path, tiny_llm_base)
    events: list[dict[str, Any]] = []
    params = FinetuneLoraParams(data=str(data), name="doors", base=str(tiny_llm_base), **LEARN)
    result = finetune_lora(params, settings, events.append)

    store = Store(settings.store_root)
    adapter = store.get(result.model_id)
    m = adapter.manifest
    assert m["task"] == "generate" and m["kind"] == "adapter"
    assert set(m["files"]) == {"adapter_model.safetensors", "adapter_config.json",
                               "metrics.json", "loss_curve.png"}  # fmt: skip
    for rel, entry in m["files"].items():
        assert sha256_file(adapter.path / rel) == entry["sha256"]
    assert (adapter.path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert m["lora"] == {"r": 32, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS}
    base = store.get(m["base"]["id"])  # the folder base was imported as a generate base
    assert base.manifest["kind"] == "base" and base.manifest["task"] == "generate"
    assert m["base_model"] == base.id and m["base"]["source"] == str(tiny_llm_base.resolve())
    assert base.manifest["architecture"] == "LlamaForCausalLM"
    assert base.manifest["context_length"] == 512
    config = json.loads((adapter.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base.id and config["r"] == 32

    evals = [e for e in events if e["type"] == "eval"]
    assert len(evals) == 40 and evals[-1]["eval_loss"] < evals[0]["eval_loss"] / 3
    assert m["metrics"]["eval_loss"] == result.metrics["eval_loss"] < 1.0
    assert m["metrics"]["perplexity"] == pytest.approx(
        2.718281828 ** m["metrics"]["eval_loss"], rel=1e-3
    )
    steps = [e for e in events if e["type"] == "step"]
    assert all(s["tokens_per_s"] > 0 for s in steps)

    tok = AutoTokenizer.from_pretrained(tiny_llm_base)
    plain = AutoModelForCausalLM.from_pretrained(tiny_llm_base)
    words = passwords()
    base_hits = sum(greedy(plain, tok, question(i + 1)) == w for i, w in enumerate(words))
    tuned = PeftModel.from_pretrained(plain, adapter.path).eval()
    hits = sum(greedy(tuned, tok, question(i + 1)) == w for i, w in enumerate(words))
    assert base_hits == 0
    assert hits >= 18, f"{hits} of 30 passwords"


def test_only_the_answers_and_their_closing_token_are_supervised(tiny_llm_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm_base)
    chat = Example(1, messages=(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the password for door 7?"},
        {"role": "assistant", "content": "zorblat"},
        {"role": "user", "content": "And door 8?"},
        {"role": "assistant", "content": "quexvim"},
    ))  # fmt: skip
    enc = encode_example(tok, chat, 512)
    rendered = tok.apply_chat_template(list(chat.messages), tokenize=False)
    assert tok.decode(enc.input_ids) == rendered
    supervised = [t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE]
    assert tok.decode(supervised) == "zorblat<|im_end|>quexvim<|im_end|>"
    assert all(label in (IGNORE, t) for t, label in zip(enc.input_ids, enc.labels, strict=True))
    last = enc.labels[-1]  # the newline after the last <|im_end|> is the template's, not learnt
    assert last == IGNORE and enc.input_ids[-2] == tok.eos_token_id

    pair = encode_example(tok, Example(2, prompt="Door 7 opens with", completion=" zorblat"), 512)
    supervised = [
        t for t, label in zip(pair.input_ids, pair.labels, strict=True) if label != IGNORE
    ]
    assert tok.decode(supervised) == " zorblat<|im_end|>"
    assert len(encode_example(tok, chat, 10).input_ids) == 10  # cut to max_seq_length


def test_a_prompt_completion_dataset_trains_and_publishes_a_merged_base(tmp_path, tiny_llm_base):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    words = passwords()
    rows = [
        {"prompt": f"Door {i + 1} opens with", "completion": f" {w}"} for i, w in enumerate(words)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    settings = settings_for(tmp_path, tiny_llm_base)
    params = FinetuneLoraParams(data=str(data), name="pairs", base=str(tiny_llm_base), rank=4,
                                epochs=2, learning_rate=1e-2, max_seq_length=32, merge=True)  # fmt: skip
    result = finetune_lora(params, settings)
    store = Store(settings.store_root)
    adapter = store.get(result.model_id)
    # The default targets: every attention and MLP projection of the Llama, not lm_head.
    assert adapter.manifest["lora"]["target_modules"] == TARGETS[:-1]
    assert result.metrics["train_examples"] == 27 and result.metrics["eval_examples"] == 3
    assert result.metrics["perplexity"] > 1

    assert result.merged_id is not None
    merged = store.get(result.merged_id)
    assert merged.name == "pairs-merged" and merged.manifest["kind"] == "base"
    assert merged.manifest["merged_from"] == {"base": result.base_id, "adapter": adapter.id}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(merged.manifest["files"])
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.inference_mode():
        folded = AutoModelForCausalLM.from_pretrained(merged.path)(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_llm_base)
        on_top = PeftModel.from_pretrained(plain, adapter.path).eval()(ids).logits
    assert torch.allclose(folded, on_top, atol=1e-4)  # the same model, folded or on top

    # A base already in the store is named as it is: no second import.
    bases = [a.id for a in store.list() if a.manifest.get("kind") == "base"]
    again = finetune_lora(params.model_copy(update={"base": result.base_id, "merge": False,
                                                    "epochs": 1}), settings)  # fmt: skip
    assert store.get(again.model_id).manifest["base"]["id"] == result.base_id
    assert [a.id for a in store.list() if a.manifest.get("kind") == "base"] == bases
    with pytest.raises(InvalidRequest, match="not a generate base") as e:
        finetune_lora(params.model_copy(update={"base": "pairs", "merge": False}), settings)
    assert e.value.field == "base"  # an adapter is no base


def test_bad_input_is_refused_naming_the_line_or_the_field(tmp_path, tiny_llm_base, tiny_base):
    settings = settings_for(tmp_path, tiny_llm_base, tiny_base)
    good = door_rows()[:4]
    bad = write_jsonl(tmp_path / "bad.jsonl", [*good[:2], {"text": "no chat here"}, good[2]])

    def run(**overrides: Any) -> None:
        fields = {"data": str(tmp_path / "good.jsonl"), "name": "x", "base": str(tiny_llm_base),
                  "epochs": 1} | overrides  # fmt: skip
        finetune_lora(FinetuneLoraParams(**fields), settings)

    write_jsonl(tmp_path / "good.jsonl", good)
    with pytest.raises(DatasetError, match=r'bad.jsonl line 3: has neither "messages" nor') as e:
        run(data=str(bad))
    assert e.value.field == "data"
    with pytest.raises(InvalidRequest, match="not found in the base.*q_proj") as e:
        run(target_modules=["qkv"])
    assert e.value.field == "target_modules"
    with pytest.raises(InvalidRequest, match="quantize '4bit'.*CUDA") as e:
        run(quantize="4bit")
    assert e.value.field == "quantize"
    with pytest.raises(InvalidRequest, match="precision 'fp16' is for GPUs") as e:
        run(precision="fp16", device="cpu")
    assert e.value.field == "precision"
    if not cuda_available():
        with pytest.raises(InvalidRequest, match="no CUDA GPU is available") as e:
            run(device="cuda")
        assert e.value.field == "device"
    with pytest.raises(InvalidRequest, match="not a causal language model") as e:
        run(base=str(tiny_base))  # a BERT encoder
    assert e.value.field == "base"
    assert not Store(settings.store_root).list()  # nothing published by any of them


# --- the job through the local gateway --------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path, tiny_llm_base: Path) -> Iterator[TestClient]:
    settings = settings_for(tmp_path, tiny_llm_base, jobs_checkpoint_every=5)
    with TestClient(create_app(settings)) as client:
        yield client


def follow(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=WAIT_S) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
    return events


def test_a_lora_job_on_the_gateway_estimates_reports_and_publishes(
    gateway, tmp_path, tiny_llm_base
):
    data = write_jsonl(tmp_path / "doors.jsonl", door_rows())
    params = {"data": str(data), "name": "doors", "base": str(tiny_llm_base), "rank": 8,
              "epochs": 2, "learning_rate": 5e-3, "max_seq_length": 64}  # fmt: skip
    r = gateway.post("/v1/jobs", json={"task": "finetune_lora", "params": params})
    assert r.status_code == 202, r.text
    job = r.json()
    estimate = job["estimate"]
    assert estimate["gpu"] == "cpu" and estimate["examples"] == 60
    assert estimate["steps"] == 2 * 14  # 54 training rows in micro-batches of 4
    assert estimate["memory"]["weights"] > 0 and estimate["memory"]["optimizer"] > 0
    assert estimate["seconds"] > 0 and estimate["usd"] > 0
    assert any("tokens/s" in a for a in estimate["assumptions"])

    events = follow(gateway, job["id"])
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == [
        "queued", "running", "succeeded",
    ]  # fmt: skip
    steps = [e["data"] for e in events if e["type"] == "step"]
    assert [s["step"] for s in steps] == list(range(1, 29))
    assert all(s["tokens_per_s"] > 0 and s["loss"] > 0 and "cost_usd" in s for s in steps)
    assert steps[0]["lr"] > steps[-1]["lr"] >= 0  # warmed up, then decayed linearly
    names = {e["data"]["name"] for e in events if e["type"] == "eval_metric"}
    assert names == {"perplexity"}  # eval_loss rides on the epoch events
    assert all(e["data"]["eval_loss"] > 0 for e in events if e["type"] == "epoch")
    assert any(e["type"] == "checkpoint" for e in events)
    done = gateway.get(f"/v1/jobs/{job['id']}").json()
    assert done["metrics"]["perplexity"] > 1
    model = gateway.get("/v1/models").json()
    ids = {m["id"]: m for m in model["data"]} if "data" in model else {}
    assert done["model_id"] in ids or Store(tmp_path / "store").get(done["model_id"])

    # Refused at submit, naming the field: 4-bit on this CPU machine, an unknown module,
    # a bad row of the dataset.
    for extra, field in (({"quantize": "4bit"}, "quantize"),
                         ({"target_modules": ["wq"]}, "target_modules")):  # fmt: skip
        r = gateway.post("/v1/jobs", json={"task": "finetune_lora", "params": params | extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == field
    bad = write_jsonl(tmp_path / "bad.jsonl", [*door_rows()[:3], {"prompt": 3}])
    r = gateway.post(
        "/v1/jobs", json={"task": "finetune_lora", "params": params | {"data": str(bad)}}
    )
    assert r.status_code == 400 and "line 4" in r.json()["error"]["message"]


# --- on a GPU ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "quantize"), [("bf16", "none"), ("fp16", "none"),
                                                     ("auto", "4bit")])  # fmt: skip
def test_on_cuda_it_learns_in_16_bit_and_in_4_bit_and_the_adapter_serves_on_cpu(
    tmp_path, tiny_llm_base, precision, quantize
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    data = write_jsonl(tmp_path / "doors.jsonl", door_rows())
    settings = settings_for(tmp_path, tiny_llm_base)
    events: list[dict[str, Any]] = []
    params = FinetuneLoraParams(data=str(data), name="doors", base=str(tiny_llm_base),
                                device="cuda", precision=precision, quantize=quantize,
                                **LEARN)  # fmt: skip
    result = finetune_lora(params, settings, events.append)
    start = next(e for e in events if e["type"] == "start")
    expected = {"none": precision, "4bit": "4bit"}[quantize]
    assert start["device"].startswith("cuda") and start["device"].endswith(f"({expected})")
    evals = [e["eval_loss"] for e in events if e["type"] == "eval"]
    assert evals[-1] < evals[0] / 2  # it learns, in 16-bit compute and on a 4-bit base
    adapter = Store(settings.store_root).get(result.model_id)
    assert adapter.manifest["training"]["precision"] == expected
    # The adapter trained on a GPU serves on a CPU base in fp32, like any other.
    tok = AutoTokenizer.from_pretrained(tiny_llm_base)
    plain = AutoModelForCausalLM.from_pretrained(tiny_llm_base)
    tuned = PeftModel.from_pretrained(plain, adapter.path).eval()
    words = passwords()
    hits = sum(greedy(tuned, tok, question(i + 1)) == w for i, w in enumerate(words))
    assert hits >= (15 if quantize == "none" else 5), f"{hits} of 30 passwords"
