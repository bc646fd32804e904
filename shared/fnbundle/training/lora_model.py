"""The model of a LoRA run: the base checked and loaded for training, the LoRA adapters put
on it, and the module of the adapters' weights that the training loop owns.

Key rules: the base must be a causal LM (a store base is a ``generate`` base); it loads
from safetensors only, never with remote code, frozen: fp32 on CPU, bf16 (fp16 where the GPU
has no bf16) or fp16 on a GPU, 4-bit NF4 with ``quantize`` (double quantization, the half
precision as compute type); its KV cache is off while training. Only the adapters train,
in fp32 (PEFT's), and :func:`adapter_weights` holds exactly those tensors, so what the loop
saves, restores and clips costs the adapters' size, not the base's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fnbundle.loading import parse_model_ref, resolve_model_dir
from fnbundle.settings import Settings
from fnbundle.tasks.finetune_lora.estimate import choose_targets
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams
from fnbundle.tasks.generate.base_import import check_causal_lm, import_base, read_config

LINEAR_CLASSES = {"Linear", "Linear4bit", "Linear8bitLt", "Conv1D"}


def adapter_weights(peft_model: Any) -> Any:
    """A module holding exactly the trainable (adapter) parameters of ``peft_model``, the
    same tensors: what the loop saves, restores, clips and keeps as the best epoch."""
    import torch

    class AdapterWeights(torch.nn.Module):
        def __init__(self, params: list[torch.nn.Parameter]):
            super().__init__()
            self.adapters = torch.nn.ParameterList(params)

    return AdapterWeights([p for p in peft_model.parameters() if p.requires_grad])


def linear_leaves(model: Any) -> dict[str, int]:
    """Leaf names of the model's linear layers (``q_proj``) -> how many there are."""
    found: dict[str, int] = {}
    for name, module in model.named_modules():
        if type(module).__name__ in LINEAR_CLASSES:
            leaf = name.rsplit(".", 1)[-1]
            found[leaf] = found.get(leaf, 0) + 1
    return found


def base_dir(p: FinetuneLoraParams, settings: Settings) -> Path:
    """The base's folder, checked to be a causal LM (a store base is a generate base)."""
    if parse_model_ref(p.base, field="base").kind == "store":
        import_base(p.base, None, settings)  # refuses a store model of another kind
    folder = resolve_model_dir(p.base, settings, field="base")
    check_causal_lm(read_config(folder), p.base)
    return folder


def compute_dtype(precision: str) -> Any:
    """The dtype the base computes in: fp32, or the half type the precision asks for (bf16
    falls back to fp16 on a GPU without it)."""
    import torch

    half = torch.bfloat16 if precision in {"bf16", "4bit"} else torch.float16
    if precision in {"bf16", "4bit"} and not torch.cuda.is_bf16_supported():
        half = torch.float16
    return torch.float32 if precision == "fp32" else half


def load_base(folder: Path, precision: str, dtype: Any, device: Any) -> Any:
    """The frozen base on ``device`` in ``dtype`` (``compute_dtype(precision)``), quantized
    to 4-bit NF4 and prepared for k-bit training when ``precision`` is 4bit."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if precision == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index or 0}
    kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if precision == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device)
    model.config.use_cache = False  # no KV cache while training
    return model


def add_lora(base: Any, p: FinetuneLoraParams) -> tuple[Any, list[str]]:
    """``base`` wrapped with trainable LoRA adapters on the chosen linear layers (in train
    mode), and the names of those layers."""
    from peft import LoraConfig, get_peft_model

    targets = choose_targets(p.target_modules, linear_leaves(base))
    config = LoraConfig(
        r=p.rank,
        lora_alpha=p.alpha,
        lora_dropout=p.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    model.train()
    return model, targets
