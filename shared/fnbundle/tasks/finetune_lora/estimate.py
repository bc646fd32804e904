"""What a ``finetune_lora`` job will need and cost, before it runs: memory, the GPU it
should get, time and price.

Every row of the dataset is read and checked (a bad row is refused at submit, naming its
line), the base's size and projections come from its config and safetensors headers (no
weight is read), and the target modules are checked against the layers the base has.

* Memory: the base's weights at the chosen precision (fp32 4 bytes, bf16 / fp16 2, 4-bit
  NF4 ~0.56 with its scales), the LoRA weights with their gradients and AdamW moments
  (16 bytes each, all fp32), activations for one micro-batch of the longest example
  (Korthikanti et al. 2022, as :mod:`fnbundle.platforms.sizing`) plus the fp32 logits and
  their gradient, and the runtime.
* Time: tokens (after per-batch padding) x epochs, at ``4 x weights`` FLOPs per training
  token (forward, and the backward pass through frozen layers: no weight gradients but
  the adapters') and ``2 x weights`` per evaluated token, divided by the device's
  throughput. Throughput is :class:`~fnbundle.platforms.estimates.Calibration`'s per
  device (fp32 FLOP/s, measured or guessed); 16-bit work runs :data:`HALF_SPEEDUP` times
  faster on tensor cores and 4-bit :data:`NF4_SPEEDUP` of that. The FLOPs per token
  reported are fp32-equivalent (divided by that speed-up), so the job's measured
  throughput calibrates the same figure every task shares.

Key rule: nothing here imports torch unless the job asks a local run for CUDA (then
whether this machine has it decides at once).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fnbundle.errors import InvalidRequest
from fnbundle.platforms.catalogue import GIB, Platform, check_platform, cpu_usd_per_s
from fnbundle.settings import Settings
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams, check_hardware

if TYPE_CHECKING:
    from fnbundle.platforms.estimates import Estimate
    from fnbundle.platforms.sizing import MemoryEstimate, ModelShape

# The projections LoRA adapts by default, when the base has them: attention and MLP of
# Llama / Mistral / Qwen / Gemma (q/k/v/o, gate/up/down), GPT-2 (c_attn, c_proj, c_fc),
# GPT-NeoX (query_key_value, dense*), Phi / Falcon (fc1/fc2, dense).
DEFAULT_TARGETS = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "c_attn", "c_proj", "c_fc", "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h",
    "fc1", "fc2", "qkv_proj", "gate_up_proj", "w1", "w2", "w3", "wqkv", "out_proj",
)  # fmt: skip
EMBEDDINGS = re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings)(\.|$)")
OUTPUT = "lm_head"  # the output projection: adapted only when asked for (tied or not)
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit": 0.5625}  # NF4 + scales
LORA_BYTES = 16  # per adapter weight: fp32 weight, gradient and two AdamW moments
HALF_SPEEDUP = 4.0  # 16-bit tensor-core matmuls against the fp32 peak (L4: 4x, A100: 16x)
NF4_SPEEDUP = 0.7  # 4-bit bases dequantize each weight before its matmul
TRAIN_FLOPS_PER_WEIGHT = 4  # forward 2 + backward through frozen weights 2 (no weight grads)
EVAL_FLOPS_PER_WEIGHT = 2
CHAT_TOKENS_PER_MESSAGE = 4  # the template's role header and closing token, roughly
CHARS_PER_TOKEN = 4.0  # when the base has no tokenizer.json
JOB_OVERHEAD_S = 60  # seconds: load the base, import it into the store, save and publish
COLD_START_S = 30  # seconds: a serverless container starting (billed on Modal and RunPod)
LENGTH_WINDOW = 8  # batches sorted by length together (training.lora's batching)


def linear_shapes(tensors: dict[str, dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """Module leaf name (``q_proj``) -> (in, out) of each 2-D ``<...>.<leaf>.weight``; the
    embeddings are not linear layers, but ``lm_head`` is there even when tied to them."""
    out: dict[str, list[tuple[int, int]]] = {}
    embedding: tuple[int, int] | None = None
    for name, info in tensors.items():
        shape = info.get("shape") or []
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        if EMBEDDINGS.search(name):
            embedding = (int(shape[1]), int(shape[0]))  # (hidden, vocab): a tied lm_head's
            continue
        leaf = name[: -len(".weight")].rsplit(".", 1)[-1]
        out.setdefault(leaf, []).append((int(shape[1]), int(shape[0])))
    if OUTPUT not in out and embedding is not None:  # tied to the input embeddings
        out[OUTPUT] = [embedding]
    return out


def choose_targets(requested: list[str], available: dict[str, Any]) -> list[str]:
    """The modules to adapt: those asked for (each must exist), else the default
    projections the base has; a 400 naming ``target_modules`` otherwise."""
    if requested:
        unknown = [m for m in requested if m.rsplit(".", 1)[-1] not in available]
        if unknown:
            known = ", ".join(sorted(available)) or "(none)"
            raise InvalidRequest(
                f"target_modules {', '.join(unknown)} not found in the base; its linear "
                f"layers: {known}.",
                field="target_modules",
            )
        return requested
    found = [m for m in DEFAULT_TARGETS if m in available]
    if not found:
        known = ", ".join(sorted(available)) or "(none)"
        raise InvalidRequest(
            f"The base has none of the usual attention / MLP projections; name "
            f"target_modules among its linear layers: {known}.",
            field="target_modules",
        )
    return found


def lora_parameters(shapes: dict[str, list[tuple[int, int]]], targets: list[str], rank: int) -> int:
    return sum(
        rank * (n_in + n_out) for m in targets for n_in, n_out in shapes[m.rsplit(".", 1)[-1]]
    )


def precision_of(p: FinetuneLoraParams, on_gpu: bool) -> str:
    """The base's storage: 4bit, fp32 on CPU, else the precision asked (auto: bf16)."""
    if p.quantize == "4bit":
        return "4bit"
    if not on_gpu:
        return "fp32"
    return "bf16" if p.precision == "auto" else p.precision


def lora_memory(
    shape: ModelShape, lora_params: int, precision: str, batch: int, seq_len: int
) -> MemoryEstimate:
    from fnbundle.platforms.sizing import CONTEXT_OVERHEAD, MemoryEstimate

    act_bytes = 4 if precision == "fp32" else 2
    s, h, a = seq_len, shape.hidden, shape.heads
    per_layer = s * batch * h * (34 + 5 * a * s / h) * act_bytes / 2
    logits = 2 * batch * s * shape.vocab * 4  # fp32 logits and their gradient
    parts = {
        "weights": math.ceil(shape.n_params * BYTES_PER_WEIGHT[precision]) + lora_params * 4,
        "gradients": lora_params * 4,
        "optimizer": lora_params * 8,
        "activations": math.ceil(shape.layers * per_layer + logits),
        "overhead": CONTEXT_OVERHEAD,
    }
    return MemoryEstimate(**parts, total=sum(parts.values()))


def _token_counter(tokenizer_file: Path | None) -> tuple[Any, str]:
    if tokenizer_file is None:
        return (lambda text: max(1, round(len(text) / CHARS_PER_TOKEN))), (
            f"{CHARS_PER_TOKEN:g} characters per token"
        )
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_truncation()
    tok.no_padding()
    return (lambda text: len(tok.encode(text, add_special_tokens=False).ids)), (
        "counted with the base's tokenizer"
    )


def example_lengths(
    examples: list[Any], tokenizer_file: Path | None, cap: int
) -> tuple[list[int], str]:
    """Tokens per example (a chat's template approximated per message), cut to ``cap``."""
    count, how = _token_counter(tokenizer_file)
    lengths = []
    for ex in examples:
        if ex.messages is not None:
            n = sum(count(m["content"]) + CHAT_TOKENS_PER_MESSAGE for m in ex.messages)
        else:
            n = count(ex.prompt + ex.completion) + 2  # bos and eos
        lengths.append(min(cap, max(1, n)))
    return lengths, how


def padded_tokens(lengths: list[int], batch_size: int, seed: int | None) -> int:
    from fnbundle.platforms.estimates import _padded_tokens

    return _padded_tokens(lengths, batch_size, seed)


def _local_cuda(p: FinetuneLoraParams) -> bool | None:
    """Whether this machine (a local run) has CUDA, asked only when the job needs it."""
    if p.quantize != "4bit" and p.device != "cuda":
        return None
    import torch

    return bool(torch.cuda.is_available())


def _base_tensors(
    p: FinetuneLoraParams, settings: Settings
) -> tuple[ModelShape, Path | None, dict[str, Any] | None]:
    """Shape, tokenizer file and safetensors headers of the base (headers None for a Hub
    base read from the Hub: sized from its headers there, not kept)."""
    from fnbundle.loading import parse_model_ref, resolve_model_dir
    from fnbundle.platforms.sizing import base_shape, read_safetensors_header
    from fnbundle.tasks.generate.base_import import check_causal_lm, read_config

    if parse_model_ref(p.base, field="base").kind == "hf":
        shape, tokenizer = base_shape(p.base, settings, False)
        return shape, tokenizer, None
    folder = resolve_model_dir(p.base, settings, field="base")
    check_causal_lm(read_config(folder), p.base)
    shape, tokenizer = base_shape(p.base, settings, False)
    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(read_safetensors_header(file))
    return shape, tokenizer, tensors


def estimate_lora(
    p: FinetuneLoraParams, settings: Settings, *, platform: str, gpu: str | None
) -> Estimate:
    from fnbundle.datasets import data_roots, resolve_data
    from fnbundle.platforms.catalogue import get_gpu, recommend_gpu
    from fnbundle.platforms.estimates import (
        Calibration,
        Estimate,
        _approximate,
        local_cores,
    )
    from fnbundle.platforms.sizing import BaseNotChecked
    from fnbundle.training.lora_data import load_examples, split_indices

    check_platform(platform)
    on_gpu = platform != "local" or p.device == "cuda" or p.quantize == "4bit"
    check_hardware(p, cuda_here=_local_cuda(p) if platform == "local" else True)
    _, examples = load_examples(resolve_data(p.data, settings), data_roots(settings))
    try:
        shape, tokenizer_file, tensors = _base_tensors(p, settings)
    except BaseNotChecked as exc:
        return _approximate(
            "finetune_lora", platform, p.base, len(examples), settings, gpu, str(exc)
        )
    if tensors is not None:
        shapes = linear_shapes(tensors)
        targets = choose_targets(p.target_modules, shapes)
        n_lora = lora_parameters(shapes, targets, p.rank)
        counted_lora = f"{n_lora:,} LoRA weights on {', '.join(targets)}"
    else:  # a Hub base sized from its shape: 7 projections of ~hidden x hidden per layer
        n_lora = shape.layers * 7 * p.rank * 2 * shape.hidden
        counted_lora = f"~{n_lora:,} LoRA weights (7 projections per layer assumed)"
    train_idx, eval_idx = split_indices(len(examples), p.eval_share, p.seed)
    lengths, counted = example_lengths(examples, tokenizer_file, p.max_seq_length)
    train_tokens = p.epochs * padded_tokens([lengths[i] for i in train_idx], p.batch_size, p.seed)
    eval_tokens = p.epochs * padded_tokens([lengths[i] for i in eval_idx], p.batch_size, None)
    precision = precision_of(p, on_gpu)
    memory = lora_memory(shape, n_lora, precision, p.batch_size, max(lengths))
    dense = max(shape.n_params - shape.vocab * shape.hidden, 1)  # embeddings: lookups only
    speedup = 1.0 if precision == "fp32" else HALF_SPEEDUP
    if precision == "4bit":
        speedup *= NF4_SPEEDUP
    flops = (train_tokens * TRAIN_FLOPS_PER_WEIGHT + eval_tokens * EVAL_FLOPS_PER_WEIGHT) * dense
    fp32_flops = flops / speedup  # what the calibration's fp32 FLOP/s figure divides
    steps_per_epoch = math.ceil(math.ceil(len(train_idx) / p.batch_size) / p.gradient_accumulation)
    assumptions = [
        f"{len(train_idx)} training and {len(eval_idx)} held-out examples; all {p.epochs} "
        "epochs run (early stopping can only end sooner)",
        f"{train_tokens // p.epochs:,} training tokens per epoch after per-batch padding "
        f"({counted}); {counted_lora}",
        f"base weights in {precision}; training {TRAIN_FLOPS_PER_WEIGHT} and evaluation "
        f"{EVAL_FLOPS_PER_WEIGHT} FLOPs per weight and token",
    ]
    overhead = JOB_OVERHEAD_S
    if platform == "local":
        cores = local_cores(settings)
        memory_gib = math.ceil(memory.total / GIB)
        usd_per_s = cpu_usd_per_s(cores, memory_gib)
        assumptions.append(
            f"priced as {cores} Modal CPU cores and {memory_gib} GiB at Modal's rates"
        )
        device = "cpu"  # the calibration key and the price of a local run, CUDA or not
    else:
        chosen = recommend_gpu(platform, memory.total) if gpu is None else get_gpu(platform, gpu)
        if chosen.memory_gib * GIB < memory.total:
            raise InvalidRequest(
                f"{chosen.name} has {chosen.memory_gib:g} GiB; this job needs "
                f"{memory.total / GIB:.1f} GiB. Lower batch_size or max_seq_length, or use "
                "quantize 4bit.",
                field="gpu",
            )
        device, usd_per_s, overhead = chosen.name, chosen.usd_per_s, overhead + COLD_START_S
        assumptions.append(
            f"{chosen.label} at the GPU price only, suggested for {memory.total / GIB:.1f} GiB"
        )
    calibration = Calibration.for_settings(settings)
    runs = calibration.measured_runs(device)
    rate = calibration.flops_per_s(device)
    if speedup != 1.0:
        assumptions.append(f"{precision} runs {speedup:g}x the fp32 rate on tensor cores (a guess)")
    assumptions.append(
        f"{device} at {rate / 1e12:.3g} fp32 TFLOP/s "
        + (f"(measured over {runs} run(s))" if runs else "(default guess, not yet measured)")
        + f": ~{(train_tokens + eval_tokens) / max(fp32_flops / rate, 1e-9):,.0f} tokens/s"
    )
    assumptions.append(f"{overhead} s to start, load and import the base, save and publish")
    seconds = fp32_flops / rate + overhead
    tokens = train_tokens + eval_tokens
    return Estimate(
        task="finetune_lora",
        platform=cast(Platform, platform),
        gpu=device,
        usd_per_s=usd_per_s,
        memory=memory,
        examples=len(examples),
        steps=p.epochs * steps_per_epoch,
        tokens=tokens,
        flops_per_token=fp32_flops / tokens,
        seconds=round(seconds, 1),
        usd=round(seconds * usd_per_s, 6),
        assumptions=assumptions,
    )


__all__ = ["DEFAULT_TARGETS", "choose_targets", "estimate_lora", "linear_shapes"]
