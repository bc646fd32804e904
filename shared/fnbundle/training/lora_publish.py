"""A fine-tuned LoRA adapter into the store, in the agreed ``generate`` adapter format, and
optionally the base with the adapter merged in, as a ``generate`` base.

The adapter artifact: ``adapter_model.safetensors`` and ``adapter_config.json`` (PEFT's,
with ``base_model_name_or_path`` naming the base's store id instead of a local folder),
``metrics.json`` and ``loss_curve.png``; its manifest names the base (``base``: id, source,
revision, where the revision is the base's own or the sha256 of its weights), the LoRA
settings and the held-out metrics. The merged model is ``<name>-merged``: the base loaded
afresh on CPU (never from 4-bit weights), the adapter folded in, saved as safetensors with
the tokenizer.

Key rule: each artifact is staged whole and published in one step by the store, so a
crash while saving never leaves one that looks complete. Torch and PEFT are imported
inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fnbundle.store import Artifact, Store
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams
from fnbundle.tasks.generate.base_import import publish_base, weights_digest

TASK = "generate"
KIND = "adapter"
MANIFEST_METRICS = ("eval_loss", "perplexity", "eval_examples")


def plot_loss_curve(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss per step and held-out loss per epoch, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if h["type"] == "step"]
    evals = [h for h in history if h["type"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss", alpha=0.7)
    if evals:
        ax.plot(
            [e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss"
        )
    ax.set(xlabel="step", ylabel="loss (answer tokens)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def publish_adapter(
    store: Store,
    p: FinetuneLoraParams,
    model: Any,
    base: Artifact,
    targets: list[str],
    metrics: dict[str, Any],
    training: dict[str, Any],
    history: list[dict[str, Any]],
) -> Artifact:
    """Publish PEFT model ``model``'s adapter as ``p.name``, on store base ``base``."""
    with store.staging(p.name) as staged:
        model.save_pretrained(str(staged), safe_serialization=True)
        (staged / "README.md").unlink(missing_ok=True)  # PEFT's model card: not ours
        config_path = staged / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base.id
        config_path.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
        (staged / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_loss_curve(history, staged / "loss_curve.png", f"{p.name} on {base.id}")
        manifest: dict[str, Any] = {
            "name": p.name,
            "task": TASK,
            "kind": KIND,
            "base": {
                "id": base.id,
                "source": base.manifest.get("source"),
                "revision": base.manifest.get("revision") or base.manifest.get("weights_sha256"),
            },
            "base_model": base.id,
            "lora": {
                "r": p.rank,
                "alpha": p.alpha,
                "dropout": p.dropout,
                "target_modules": targets,
            },
            "metrics": {k: metrics[k] for k in MANIFEST_METRICS},
            "training": training,
        }
        return store.publish(staged, manifest)


def publish_merged(
    store: Store, name: str, base: Artifact, adapter: Artifact, tokenizer: Any, *, fp32: bool
) -> Artifact:
    """The base with ``adapter`` folded into its weights, as base ``<name>-merged`` (in
    fp32 when training was, else bf16)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if fp32 else torch.bfloat16
    plain = AutoModelForCausalLM.from_pretrained(
        base.path, dtype=dtype, use_safetensors=True, trust_remote_code=False
    )
    merged = PeftModel.from_pretrained(plain, str(adapter.path)).merge_and_unload()
    merged_name = f"{name}-merged"
    with store.staging(merged_name) as folder:
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        return publish_base(
            store,
            folder,
            merged_name,
            source=adapter.id,
            revision=weights_digest(folder),
            extra={"merged_from": {"base": base.id, "adapter": adapter.id}},
        )
