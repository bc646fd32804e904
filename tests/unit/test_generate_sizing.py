"""GPU memory sizing of a served LLM: the arithmetic, the GPU it picks, the models it
refuses, the shape read from a model folder, and the endpoint declaration's check."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from fnbundle.endpoints import LLM_ENV, llm_env, load_endpoints
from fnbundle.errors import InvalidRequest
from fnbundle.platforms.catalogue import GIB, get_gpu
from fnbundle.tasks.generate.sizing import (
    RUNTIME_OVERHEAD,
    LlmShape,
    device_fit_problem,
    fits,
    pick_gpu,
    serving_memory,
    shape_from_folder,
)

from tests.unit.test_endpoints import write_declaration

pytestmark = pytest.mark.unit

# Qwen2.5-7B-Instruct's config.json and parameter count (the shipped generate endpoint).
QWEN_7B = LlmShape(
    parameters=7_615_616_512,
    layers=28,
    kv_heads=4,
    head_dim=128,
    hidden=3584,
    intermediate=18944,
    dtype="bfloat16",
    max_context=32768,
)
# Llama-3.1-70B: 80 layers, 8 key/value heads.
LLAMA_70B = QWEN_7B.model_copy(
    update={
        "parameters": 70_553_706_496,
        "layers": 80,
        "kv_heads": 8,
        "hidden": 8192,
        "intermediate": 28672,
        "max_context": 131072,
    }
)


def test_the_kv_cache_holds_keys_and_values_of_every_layer_per_token():
    # 2 (k and v) x 28 layers x 4 heads x 128 dims x 2 bytes
    assert QWEN_7B.kv_bytes_per_token == 57_344
    memory = serving_memory(QWEN_7B, context_length=8192, sequences=8)
    assert memory.kv_cache == 57_344 * 8192 * 8 == int(3.5 * GIB)
    assert memory.weights == 7_615_616_512 * 2
    assert memory.lora == 0 and memory.overhead == RUNTIME_OVERHEAD
    assert memory.total == memory.weights + memory.kv_cache + memory.overhead


def test_lora_slots_grow_with_adapters_and_rank():
    one = serving_memory(QWEN_7B, context_length=1024, sequences=1, max_adapters=1, max_lora_rank=8)
    four = serving_memory(
        QWEN_7B, context_length=1024, sequences=1, max_adapters=4, max_lora_rank=16
    )
    assert one.lora > 0 and four.lora == 8 * one.lora
    assert four.total - one.total == four.lora - one.lora


def test_a_7b_model_at_a_modest_context_gets_the_cheapest_24_gb_card():
    memory = serving_memory(
        QWEN_7B, context_length=8192, sequences=8, max_adapters=4, max_lora_rank=16
    )
    assert memory.breakdown_gib() == {
        "weights": 14.2,
        "kv_cache": 3.5,
        "lora": 0.3,
        "overhead": 2.0,
        "total": 20.0,
    }
    assert pick_gpu("modal", memory, 0.9).name == "L4"
    assert pick_gpu("runpod", memory, 0.9).name == "AMPERE_24"


def test_more_context_moves_the_model_to_a_larger_card():
    memory = serving_memory(QWEN_7B, context_length=32768, sequences=16)  # 28 GiB of KV cache
    gpu = pick_gpu("modal", memory, 0.9)
    assert gpu.memory_gib >= 48
    assert not fits(get_gpu("modal", "L4"), memory, 0.9)


def test_a_lower_utilization_leaves_vllm_less_of_the_card():
    memory = serving_memory(QWEN_7B, context_length=8192, sequences=8)
    l4 = get_gpu("modal", "L4")
    assert fits(l4, memory, 0.9) and not fits(l4, memory, 0.7)


def test_a_model_no_gpu_holds_is_refused_with_the_numbers():
    memory = serving_memory(LLAMA_70B, context_length=131072, sequences=64)
    with pytest.raises(InvalidRequest) as caught:
        pick_gpu("runpod", memory, 0.9)
    message = caught.value.message
    assert "No runpod GPU fits this model" in message
    assert "HOPPER_141 has 118.2 GiB for vLLM (141 GB x gpu_memory_utilization 0.9)" in message
    assert "weights 131.4" in message and "64 sequences x 131072 tokens" in message
    assert "Lower context_length or max_concurrent_sequences" in message


def test_a_context_beyond_the_model_is_refused():
    with pytest.raises(InvalidRequest, match="beyond the model's 32768 tokens"):
        serving_memory(QWEN_7B, context_length=65536, sequences=1)


def test_the_gpu_at_hand_must_hold_one_full_context_before_vllm_loads():
    l4 = int(22.5 * GIB)  # what CUDA reports for a 24 GB L4
    assert device_fit_problem(QWEN_7B, l4, 0.9, context_length=32768) is None
    t4 = int(14.6 * GIB)  # a 16 GB T4
    problem = device_fit_problem(QWEN_7B, t4, 0.9, context_length=8192)
    assert problem is not None
    assert problem.startswith("This GPU has 13.1 GiB for vLLM (14.6 GiB x gpu_memory_utilization")
    assert "weights 14.2" in problem and "1 sequences x 8192 tokens" in problem
    assert "Lower FNB_VLLM_MAX_MODEL_LEN" in problem


# --- a model folder -------------------------------------------------------------------
def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file whose header lists ``tensors`` (dtype, shape); zero-filled data."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = 2 if dtype in {"BF16", "F16"} else 4 if dtype in {"F32", "I32"} else 8
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def llama_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "torch_dtype": "float32",
        "vocab_size": 100,
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(
        folder / "model.safetensors",
        {
            "model.embed_tokens.weight": ("BF16", [100, 64]),
            "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 64]),
            "model.layers.0.self_attn.k_proj.weight": ("BF16", [32, 64]),
            "model.rotary.inv_freq": ("I64", [16]),  # a buffer, not a weight
        },
    )
    return folder


def test_a_folder_is_sized_from_its_config_and_safetensors_headers(tmp_path):
    shape = shape_from_folder(llama_folder(tmp_path))
    assert shape.parameters == 100 * 64 + 64 * 64 + 32 * 64
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (2, 2, 16)
    assert (shape.hidden, shape.intermediate, shape.max_context) == (64, 128, 512)
    assert shape.dtype == "bfloat16"  # what the weights are, not what the config says
    assert shape.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2


def test_a_folder_without_weights_uses_the_manifests_parameter_count(tmp_path):
    folder = llama_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    shape = shape_from_folder(folder, {"parameters": 1234})
    assert shape.parameters == 1234 and shape.dtype == "float32"
    with pytest.raises(InvalidRequest, match="no safetensors weights"):
        shape_from_folder(folder, {})


def test_a_folder_without_a_usable_config_is_refused(tmp_path):
    folder = llama_folder(tmp_path)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(InvalidRequest, match="num_attention_heads"):
        shape_from_folder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(InvalidRequest, match="no config.json"):
        shape_from_folder(folder)


# --- the endpoint declaration ---------------------------------------------------------
LLM = {
    "base": "hf:Qwen/Qwen2.5-7B-Instruct",
    **QWEN_7B.model_dump(),
    "context_length": 8192,
    "max_concurrent_sequences": 8,
    "gpu_memory_utilization": 0.9,
    "max_adapters": 4,
    "max_lora_rank": 16,
}


def declare_llm(tmp_path: Path, gpu: str | None, pools: list[str], **llm: object) -> Path:
    """One endpoint ``demo`` with an llm table (on the embed task: the check is the table's)."""
    path = write_declaration(
        tmp_path, {"gpu": gpu}, {"gpu_ids": pools, "cuda_versions": ["12.8"]}, task="embed"
    )
    table = {**LLM, **llm}
    lines = ["", "[endpoints.demo.llm]"] + [
        f"{k} = {json.dumps(v)}" for k, v in table.items() if v is not None
    ]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def test_an_llm_endpoint_that_fits_its_gpus_is_accepted(tmp_path):
    endpoint = load_endpoints(declare_llm(tmp_path, "L4", ["AMPERE_24", "ADA_24"]))["demo"]
    assert endpoint.llm is not None
    assert endpoint.llm.memory().breakdown_gib()["total"] == 20.0


def test_an_llm_endpoint_on_a_gpu_too_small_is_refused_naming_it(tmp_path):
    with pytest.raises(InvalidRequest) as caught:
        load_endpoints(declare_llm(tmp_path, "T4", ["AMPERE_24", "AMPERE_16"]))
    message = caught.value.message
    assert "modal GPU T4 has 13.4 GiB for vLLM" in message
    assert "runpod GPU AMPERE_16 has 13.4 GiB" in message
    assert "AMPERE_24" not in message.split("needs")[0]  # the pool that fits is not named
    assert "the model needs 20.0 GiB" in message


def test_an_llm_endpoint_declares_what_vllm_accepts(tmp_path):
    cases = {
        "max_lora_rank": (12, "vLLM serves LoRA ranks"),
        "context_length": (65536, "beyond the model's 32768 tokens"),
        "gpu_memory_utilization": (1.0, "less than or equal to 0.98"),
    }
    for key, (value, expected) in cases.items():
        with pytest.raises(InvalidRequest, match=expected):
            load_endpoints(declare_llm(tmp_path, "L4", ["AMPERE_24"], **{key: value}))
    with pytest.raises(InvalidRequest, match="one GPU"):
        load_endpoints(declare_llm(tmp_path, "L4:2", ["AMPERE_24"]))
    path = declare_llm(tmp_path, "L4", ["AMPERE_24"])
    text = path.read_text()
    text = text.replace(
        "[endpoints.demo.llm]",
        '[endpoints.demo.runpod.env]\nFNB_GENERATE_MAX_BATCH = "64"\n\n[endpoints.demo.llm]',
    )
    path.write_text(text)
    with pytest.raises(InvalidRequest, match="runpod.env sets FNB_GENERATE_MAX_BATCH"):
        load_endpoints(path)


def test_an_llm_tables_serving_keys_reach_the_engine_as_settings(tmp_path):
    endpoint = load_endpoints(declare_llm(tmp_path, "L4", ["AMPERE_24"]))["demo"]
    env = llm_env(endpoint.llm)
    assert env["FNB_GENERATE_BACKEND"] == "vllm"
    assert {env[name] for key, name in LLM_ENV.items()} == {"8192", "8", "4", "0.9", "16"}
    assert llm_env(None) == {}


# --- the deploy plan ------------------------------------------------------------------
def test_the_deploy_plan_shows_the_gpu_and_memory_breakdown_and_applies_the_llm_keys(tmp_path):
    from deploy.plan import PYPI_TORCH_INDEX, Options, build_plan

    endpoint = load_endpoints(declare_llm(tmp_path, None, ["AMPERE_24", "ADA_24"]))["demo"]
    options = Options(target="modal", public=True)
    modal = build_plan("modal", [endpoint], options)["endpoints"]["demo"]
    # No modal.gpu declared: the Modal app takes the cheapest GPU the sizing finds.
    assert modal["scaling"]["gpu"] == modal["llm"]["modal_gpu"] == "L4"
    assert modal["llm"]["memory_gib"]["total"] == 20.0
    assert modal["llm"]["sized_for"] == {"context_length": 8192, "sequences": 8}
    assert modal["llm"]["cheapest_fit"] == {"modal": "L4", "runpod": "AMPERE_24"}
    assert modal["openai_base_url"].endswith(".modal.run/v1")

    runpod = build_plan("runpod", [endpoint], Options(target="runpod"))
    entry = runpod["endpoints"]["demo"]
    assert entry["llm"]["runpod_gpu_ids"] == ["AMPERE_24", "ADA_24"]
    assert entry["openai_base_url"] == "https://api.runpod.ai/v2/<endpoint-id>/openai/v1"
    assert entry["worker_env"]["FNB_GENERATE_BACKEND"] == "vllm"
    assert entry["worker_env"]["FNB_VLLM_MAX_MODEL_LEN"] == "8192"
    assert entry["worker_env"]["FNB_GENERATE_MAX_BATCH"] == "8"
    build = entry["steps"][0]["run"]
    assert f"TORCH_INDEX={PYPI_TORCH_INDEX}" in build  # vLLM's own torch build
    assert "APT_PACKAGES=gcc libc6-dev" in build  # Triton compiles its launchers
    template_env = {e["key"]: e["value"] for e in entry["steps"][2]["input"]["env"]}
    assert template_env["FNB_GENERATE_MAX_ADAPTERS"] == "4"
