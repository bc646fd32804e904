"""The vLLM engine's pieces that need no GPU: our sampling settings as vLLM's, the engine
arguments, deltas read from RequestOutput-shaped objects, and the adapter table.

vLLM itself runs in tests/gpu/ (marked ``gpu``); here it is not installed, and the module
must import without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fnbundle.errors import ArtifactCorrupt, InvalidRequest, NotFound
from fnbundle.tasks.generate.engine import Delta, Sampling
from fnbundle.tasks.generate.vllm_engine import (
    AdapterTable,
    capped_context,
    delta_from_output,
    engine_kwargs,
    sampling_kwargs,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Completion:  # vllm.outputs.CompletionOutput's fields the engine reads
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Output:  # vllm.outputs.RequestOutput's
    outputs: list[Completion] = field(default_factory=list)
    finished: bool = False


def test_importing_the_engine_imports_no_vllm_torch_or_transformers():
    code = (
        "import sys, fnbundle.tasks.generate.vllm_engine; "
        "print([m for m in ('vllm', 'torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_sampling_maps_to_vllms_sampling_params():
    sampling = Sampling(
        max_tokens=64, temperature=0.0, top_p=0.9, seed=7, stop=("\n\n",), stop_token_ids=(2, 0)
    )
    assert sampling_kwargs(sampling) == {
        "n": 1,
        "max_tokens": 64,
        "temperature": 0.0,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["\n\n"],
        "stop_token_ids": [2, 0],
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }
    assert sampling_kwargs(Sampling(max_tokens=1))["seed"] is None


def test_engine_arguments_carry_the_limits_and_lora_slots(tmp_path):
    kwargs = engine_kwargs(
        tmp_path,
        model_id="qwen-v1",
        context_length=8192,
        max_batch=8,
        max_adapters=4,
        gpu_memory_utilization=0.85,
        max_lora_rank=16,
    )
    assert kwargs["model"] == kwargs["tokenizer"] == str(tmp_path)
    assert kwargs["served_model_name"] == "qwen-v1"
    assert (kwargs["max_model_len"], kwargs["max_num_seqs"]) == (8192, 8)
    assert kwargs["gpu_memory_utilization"] == 0.85
    assert kwargs["trust_remote_code"] is False
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 4, 16)
    assert kwargs["max_cpu_loras"] >= kwargs["max_loras"]


def test_an_engine_without_adapter_slots_starts_without_lora(tmp_path):
    kwargs = engine_kwargs(
        tmp_path,
        model_id="m",
        context_length=None,
        max_batch=1,
        max_adapters=0,
        gpu_memory_utilization=0.9,
        max_lora_rank=16,
    )
    assert "enable_lora" not in kwargs and kwargs["max_model_len"] is None
    with pytest.raises(InvalidRequest, match="max_lora_rank 12 is not one vLLM serves"):
        engine_kwargs(
            tmp_path,
            model_id="m",
            context_length=None,
            max_batch=1,
            max_adapters=1,
            gpu_memory_utilization=0.9,
            max_lora_rank=12,
        )


def test_the_served_context_is_the_models_own_lowered_to_the_endpoints_cap():
    assert capped_context(32768, 8192) == 8192  # Qwen2.5-7B at the endpoint's sizing
    assert capped_context(512, 8192) == 512  # never beyond the model
    assert capped_context(32768, None) == 32768
    assert capped_context(None, 4096) == 4096


def test_deltas_carry_new_text_token_counts_and_the_finish_reason():
    outputs = [
        Output([Completion("Hel", [10, 11])]),
        Output([Completion("", [])]),  # a step whose text is held back (a stop-string prefix)
        Output([Completion("lo", [12])]),
        Output([Completion("!", [13], "length")], finished=True),
    ]
    deltas = [delta_from_output(o) for o in outputs]
    assert deltas == [
        Delta("Hel", 2),
        None,
        Delta("lo", 1),
        Delta("!", 1, "length"),
    ]


@pytest.mark.parametrize(("reason", "ours"), [("stop", "stop"), ("length", "length"),
                                               ("abort", "stop"), (None, "stop")])  # fmt: skip
def test_a_finished_output_always_ends_with_our_finish_reason(reason, ours):
    assert delta_from_output(Output([Completion("", [], reason)], finished=True)) == Delta(
        "", 0, ours
    )
    assert delta_from_output(Output([], finished=True)) == Delta("", 0, "stop")


def write_adapter(folder: Path, rank: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


def test_each_adapter_gets_a_unique_lora_id_that_is_never_reused(tmp_path):
    table = AdapterTable(max_lora_rank=16, bound=2)
    a = table.add("sup-a", write_adapter(tmp_path / "a"))
    b = table.add("sup-b", write_adapter(tmp_path / "b"))
    assert (a.int_id, b.int_id) == (1, 2) and a.rank == 8
    assert table.add("sup-a", tmp_path / "a") == a  # known: same id, now most recent
    c = table.add("sup-c", write_adapter(tmp_path / "c"))
    assert c.int_id == 3
    assert "sup-b" not in table and "sup-a" in table  # the least recently used went
    assert table.get("sup-a").path == tmp_path / "a"
    with pytest.raises(NotFound, match="sup-b is not loaded"):
        table.get("sup-b")


def test_an_adapter_beyond_the_engines_rank_or_incomplete_is_refused(tmp_path):
    table = AdapterTable(max_lora_rank=16)
    with pytest.raises(InvalidRequest, match="rank 32; this engine serves ranks up to 16"):
        table.add("big", write_adapter(tmp_path / "big", rank=32))
    partial = write_adapter(tmp_path / "partial")
    (partial / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactCorrupt, match="lacks adapter_model.safetensors"):
        table.add("partial", partial)
    broken = write_adapter(tmp_path / "broken")
    (broken / "adapter_config.json").write_text("{}")
    with pytest.raises(ArtifactCorrupt, match="unreadable adapter_config.json"):
        table.add("broken", broken)
    assert "big" not in table and "partial" not in table and "broken" not in table
