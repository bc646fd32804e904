"""The options of a ``finetune_lora`` job, which are also ``fnbundle jobs submit
finetune_lora``'s options and the documented job params: one schema, every surface
generated from it.

The defaults teach a small chat model (0.1-1 B parameters) a few hundred examples in
minutes: rank 16, alpha 32 (the usual 2x rank), the attention and MLP projections,
learning rate 2e-4, 3 epochs, bf16 on a GPU and fp32 on CPU.

Key rule: this module imports nothing heavy (pydantic and the store's name check), so the
registry, the gateway and a submit check read it without torch, transformers or PEFT.
Checks that need no model (a name, a module name's spelling, 4-bit on a CPU) are made
here or in :func:`check_hardware`, before anything is queued.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnbundle.errors import InvalidRequest
from fnbundle.store import validate_name

MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")  # a submodule's (dotted) name


class FinetuneLoraParams(BaseModel):
    """The options of a ``finetune_lora`` job."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        min_length=1,
        max_length=1024,  # characters: loading.MAX_PATH_CHARS
        description='JSONL file (or dataset id): one chat per line as {"messages": [...]}, '
        'or {"prompt": ..., "completion": ...}.',
    )
    name: str = Field(description="Store name to publish the adapter under.")
    base: str = Field(
        min_length=1,
        max_length=1024,  # characters: loading.MAX_PATH_CHARS
        description="Base causal LM: a store generate base (name or id), hf:org/name@revision, "
        "or a folder inside the data roots.",
    )
    rank: int = Field(16, ge=1, le=256, description="LoRA rank r of each adapter matrix.")
    alpha: int = Field(
        32, ge=1, le=4096, description="LoRA alpha; each update is scaled by alpha / rank."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Module names to adapt (e.g. q_proj,v_proj); empty: every attention and "
        "MLP projection the model has.",
    )
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    epochs: int = Field(3, ge=1, le=100, description="Most epochs; early stopping may end sooner.")
    max_seq_length: int = Field(
        1024, ge=16, le=32768, description="Tokens kept per example (longer ones are cut)."
    )
    batch_size: int = Field(4, ge=1, le=256, description="Examples per micro-batch.")
    gradient_accumulation: int = Field(
        1, ge=1, le=256, description="Micro-batches per optimizer step."
    )
    warmup: float = Field(
        0.05, ge=0, lt=1, description="Share of the steps spent warming the learning rate up."
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    eval_share: float = Field(
        0.1,
        gt=0,
        lt=0.9,
        description="Share of the examples held out for eval loss and perplexity.",
    )
    patience: int = Field(
        2, ge=0, le=100, description="Epochs without a better eval loss before stopping (0 = off)."
    )
    seed: int = Field(
        42,
        ge=0,
        le=2**32 - 1,  # numpy's seed range; torch's is wider
        description="Seed for the split, shuffling, adapter initialisation and dropout.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train: cpu, cuda, or auto (CUDA when available)."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="Base weights and compute on a GPU: auto is bf16 where the GPU has it, "
        "else fp16; always fp32 on CPU. Adapters train in fp32.",
    )
    quantize: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA, the base in bitsandbytes NF4 (CUDA only)."
    )
    merge: bool = Field(
        False,
        description="Also publish the base with the adapter merged in, as <name>-merged.",
        json_schema_extra={"cli": "--merge/--no-merge"},
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            validate_name(value, field="name")
        except InvalidRequest as exc:  # a schema error: reported with its field path
            raise ValueError(exc.message) from None
        if len(value) > 80 - len("-merged"):
            raise ValueError("Use at most 73 characters: <name>-merged must be a valid name too.")
        return value

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        for module in value:
            if not MODULE_RE.fullmatch(module):
                raise ValueError(
                    f"{module[:100]!r} is not a module name (letters, digits, '_' and '.')."
                )
        return list(dict.fromkeys(value))  # in order, each once


def check_hardware(params: FinetuneLoraParams, *, cuda_here: bool | None) -> None:
    """Refuse (400 naming the field) what the chosen hardware cannot do: 4-bit on CPU, or
    fp16 / bf16 asked for on CPU. ``cuda_here``: whether the machine that will train has
    CUDA (None: unknown at submit, a cloud GPU worker)."""
    no_cuda = params.device == "cpu" or cuda_here is False
    where = "device 'cpu'" if params.device == "cpu" else "this machine, which has no CUDA GPU"
    if params.quantize == "4bit" and no_cuda:
        raise InvalidRequest(
            f"quantize '4bit' (QLoRA) needs a CUDA GPU (bitsandbytes NF4); it cannot run on "
            f"{where}. Use quantize 'none', or a GPU worker.",
            field="quantize",
        )
    if params.precision in {"bf16", "fp16"} and params.device == "cpu":
        raise InvalidRequest(
            f"precision {params.precision!r} is for GPUs; on device 'cpu' training runs in "
            "fp32: use precision 'auto' or 'fp32'.",
            field="precision",
        )
