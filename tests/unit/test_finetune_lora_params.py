"""finetune_lora's params, its data rows and its submit-time checks, without torch: a bad
option is a 422 naming ``params.<field>``, a bad row names its line, 4-bit on a CPU and an
unknown module are 400s naming the field, and the estimate's memory follows the precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fnbundle.errors import DatasetError, InvalidRequest
from fnbundle.jobs.schema import JobSubmit
from fnbundle.jobs.submit import validate_params
from fnbundle.platforms.sizing import ModelShape
from fnbundle.tasks import REGISTRY
from fnbundle.tasks.finetune_lora.estimate import (
    choose_targets,
    linear_shapes,
    lora_memory,
    lora_parameters,
    precision_of,
)
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams, check_hardware
from fnbundle.training.lora_data import load_examples, split_indices

from tests.conftest import REPO

pytestmark = pytest.mark.unit

BASE = {"data": "chats.jsonl", "name": "bot", "base": "hf:org/model@abc123"}


def params(**extra: object) -> FinetuneLoraParams:
    return FinetuneLoraParams.model_validate(BASE | extra)


def test_the_task_is_registered_for_gpu_workers_and_serves_generate():
    task = REGISTRY.training_task("finetune_lora")
    assert task.hardware == "gpu" and task.serves == "generate"
    assert task.params_model is FinetuneLoraParams
    assert (REPO / "data" / task.example["data"]).is_file()


def test_defaults_are_a_small_chat_models_recipe():
    p = params()
    assert (p.rank, p.alpha, p.dropout, p.target_modules) == (16, 32, 0.05, [])
    assert (p.precision, p.quantize, p.device, p.merge) == ("auto", "none", "auto", False)


@pytest.mark.parametrize(
    ("field", "value"),
    [("rank", 0), ("alpha", 0), ("dropout", 1.0), ("eval_share", 0.0), ("warmup", 1.0),
     ("quantize", "8bit"), ("precision", "fp8"), ("gradient_accumulation", 0),
     ("target_modules", ["q_proj; rm -rf"]), ("name", "Bad Name"), ("name", "x" * 74),
     ("max_seq_length", 8), ("learning_rate", 0)],
)  # fmt: skip
def test_a_bad_option_is_a_422_naming_its_field(field, value):
    with pytest.raises(Exception) as exc:
        validate_params(JobSubmit(task="finetune_lora", params=BASE | {field: value}))
    body = exc.value.to_body()  # type: ignore[attr-defined]
    assert exc.value.status == 422 and f"params.{field}" in json.dumps(body)  # type: ignore[attr-defined]


def test_target_modules_are_kept_once_each_in_order():
    assert params(target_modules=["v_proj", "q_proj", "v_proj"]).target_modules == [
        "v_proj",
        "q_proj",
    ]


def test_4bit_needs_cuda_and_16_bit_needs_a_gpu():
    with pytest.raises(InvalidRequest, match="quantize '4bit'.*device 'cpu'") as e:
        check_hardware(params(quantize="4bit", device="cpu"), cuda_here=None)
    assert e.value.field == "quantize"
    with pytest.raises(InvalidRequest, match="no CUDA GPU") as e:
        check_hardware(params(quantize="4bit"), cuda_here=False)
    assert e.value.field == "quantize"
    with pytest.raises(InvalidRequest, match="precision 'bf16'") as e:
        check_hardware(params(precision="bf16", device="cpu"), cuda_here=False)
    assert e.value.field == "precision"
    check_hardware(params(quantize="4bit"), cuda_here=True)  # a GPU worker
    assert precision_of(params(), on_gpu=False) == "fp32"
    assert precision_of(params(), on_gpu=True) == "bf16"
    assert precision_of(params(quantize="4bit"), on_gpu=True) == "4bit"


def write(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR = {"prompt": "2 + 2 =", "completion": " 4"}


@pytest.mark.parametrize(
    ("row", "message"),
    [({"text": "hi"}, r'line 3: has neither "messages" nor "prompt"/"completion" \(its keys: text\)'),
     ("{not json", "line 3: not JSON"),
     ({"messages": []}, 'line 3: "messages" must be a non-empty list'),
     ({"messages": [{"role": "user", "content": "hi"}]}, "line 3: the chat has no assistant"),
     ({"messages": [{"role": "bot", "content": "hi"}]}, "line 3: messages\\[0\\] has role 'bot'"),
     ({"messages": [{"role": "user"}]}, 'line 3: messages\\[0\\] has no text "content"'),
     ({"prompt": "x"}, 'line 3: "completion" must be non-empty text'),
     ({"prompt": 3, "completion": "x"}, 'line 3: "prompt" must be text'),
     ([1, 2], "line 3: not a JSON object")],
)  # fmt: skip
def test_a_bad_row_is_refused_naming_its_line(tmp_path, row, message):
    data = write(tmp_path / "chats.jsonl", CHAT, PAIR, row)
    with pytest.raises(DatasetError, match=message) as e:
        load_examples(data, [tmp_path])
    assert e.value.field == "data" and "chats.jsonl" in e.value.message


def test_chats_and_pairs_mix_and_blank_lines_are_skipped(tmp_path):
    path, examples = load_examples(write(tmp_path / "d.jsonl", CHAT, "", PAIR), [tmp_path])
    assert [e.line for e in examples] == [1, 3]
    assert examples[0].messages is not None and examples[1].completion == " 4"
    with pytest.raises(DatasetError, match="at least 2"):
        load_examples(write(tmp_path / "one.jsonl", CHAT), [tmp_path])
    with pytest.raises(DatasetError, match="use .jsonl"):
        load_examples(write(tmp_path / "d.csv", "a,b"), [tmp_path])
    with pytest.raises(InvalidRequest, match="outside the allowed roots"):
        load_examples(path, [tmp_path / "elsewhere"])


def test_the_split_is_seeded_and_holds_out_at_least_one():
    train, held = split_indices(30, 0.1, seed=42)
    assert len(held) == 3 and sorted(train + held) == list(range(30))
    assert split_indices(30, 0.1, seed=42) == (train, held)
    assert len(split_indices(2, 0.01, seed=1)[1]) == 1


LLAMA = {
    "model.embed_tokens.weight": {"dtype": "F32", "shape": [1000, 64]},
    "model.layers.0.self_attn.q_proj.weight": {"dtype": "F32", "shape": [64, 64]},
    "model.layers.0.self_attn.k_proj.weight": {"dtype": "F32", "shape": [32, 64]},
    "model.layers.0.mlp.down_proj.weight": {"dtype": "F32", "shape": [64, 128]},
    "model.norm.weight": {"dtype": "F32", "shape": [64]},
}


def test_targets_default_to_the_projections_the_base_has_and_unknown_ones_are_refused():
    shapes = linear_shapes(LLAMA)
    assert shapes["lm_head"] == [(64, 1000)]  # tied to the embeddings, still adaptable
    assert choose_targets([], shapes) == ["q_proj", "k_proj", "down_proj"]
    assert choose_targets(["lm_head"], shapes) == ["lm_head"]
    with pytest.raises(InvalidRequest, match="wq not found in the base.*down_proj") as e:
        choose_targets(["wq"], shapes)
    assert e.value.field == "target_modules"
    # r x (in + out) per adapted matrix
    assert lora_parameters(shapes, ["q_proj", "k_proj"], 8) == 8 * (128 + 96)


def test_memory_follows_the_precision_and_4bit_is_the_smallest():
    shape = ModelShape(n_params=7_000_000_000, n_trainable=0, hidden=4096, layers=32,
                       heads=32, vocab=32000)  # fmt: skip
    sizes = {p: lora_memory(shape, 40_000_000, p, 1, 1024) for p in ("fp32", "bf16", "4bit")}
    assert sizes["fp32"].weights > sizes["bf16"].weights > sizes["4bit"].weights
    assert sizes["bf16"].optimizer == 40_000_000 * 8
    assert 13e9 < sizes["bf16"].weights < 15e9  # 7 B weights at 2 bytes, plus the adapters
    assert sizes["4bit"].total < 24 * 1024**3 < sizes["bf16"].total  # 4-bit fits a 24 GB GPU
