"""Publish a causal LM as a ``generate`` base artifact (``kind: base``), the agreed format.

A base comes from ``hf:org/name@revision`` (downloaded into the Hub cache: its source
names the resolved commit), a folder inside the data roots, or is already in the store.
The artifact holds the Hub-style files (config.json, the safetensors weights and their
index when sharded, the tokenizer files, chat_template.jinja and generation_config.json
when present); its manifest adds ``kind``, ``context_length``, ``architecture``,
``parameters``, ``dtype``, ``source``, ``revision`` and ``base_model`` (= ``source``).

Key rules: only safetensors, and no remote code (``auto_map``), via
:func:`fnbundle.loading.resolve_model_dir`; a model that is not a causal LM (its
``architectures`` name no ``...ForCausalLM`` and its ``model_type`` is no causal LM type
transformers knows) is refused naming the field. Importing the same source again reuses the
published artifact when its weights are the same. This module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from fnbundle.errors import InvalidRequest
from fnbundle.loading import parse_model_ref, resolve_model_dir
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store, sha256_file

TASK = "generate"
KIND_BASE = "base"
# The files a base artifact carries beside its weights, when the source has them.
BASE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def read_config(folder: Path, *, field: str = "base") -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"{folder.name} has no config.json.", field=field) from None
    except ValueError as exc:
        raise InvalidRequest(f"{folder.name}/config.json is not JSON: {exc}", field=field) from None
    if not isinstance(config, dict):
        raise InvalidRequest(f"{folder.name}/config.json is not a JSON object.", field=field)
    return config


def check_causal_lm(config: dict[str, Any], ref: str, *, field: str = "base") -> str:
    """The architecture name of a causal LM; a 400 naming ``field`` for anything else."""
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    causal = [a for a in architectures if a.endswith(("ForCausalLM", "LMHeadModel"))]
    if causal:
        return causal[0]
    model_type = config.get("model_type")
    if not architectures and isinstance(model_type, str):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return str(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    named = ", ".join(architectures) or f"model_type {model_type!r}"
    raise InvalidRequest(
        f"Base {ref!r} is not a causal language model ({named}); generation and LoRA "
        "fine-tuning need a ...ForCausalLM model.",
        field=field,
    )


def weights_digest(folder: Path) -> str:
    """sha256 over the safetensors files' own sha256s, in name order: the weights' identity."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def default_name(ref: str) -> str:
    """A store name for a base from its reference: ``hf:Org/SmolLM2-135M@abc`` ->
    ``smollm2-135m``; a folder -> its own name."""
    parsed = parse_model_ref(ref, field="base")
    stem = parsed.name.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")[:60]
    return name or "base"


def _source(ref: str, folder: Path) -> tuple[str, str | None]:
    """``(source, revision)``: a Hub base by the commit its snapshot is (the cache's
    ``snapshots/<sha>/`` folder), a folder by its path."""
    parsed = parse_model_ref(ref, field="base")
    if parsed.kind == "hf":
        revision = folder.name if folder.parent.name == "snapshots" else parsed.revision
        return f"hf:{parsed.name}@{revision}" if revision else f"hf:{parsed.name}", revision
    return str(folder), None


def _dtype(config: dict[str, Any], folder: Path) -> str:
    declared = config.get("torch_dtype") or config.get("dtype")
    if isinstance(declared, str):
        return declared
    from fnbundle.platforms.sizing import read_safetensors_header

    counts: dict[str, int] = {}
    for path in folder.glob("*.safetensors"):
        for info in read_safetensors_header(path).values():
            counts[str(info.get("dtype"))] = counts.get(str(info.get("dtype")), 0) + 1
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(
        max(counts, key=lambda k: counts[k]) if counts else "", "float32"
    )


def _existing(store: Store, name: str, source: str, digest: str) -> Artifact | None:
    """The newest published version of ``name`` with the same source and weights."""
    try:
        artifact = store.resolve(name, field="base")
    except Exception:  # no such name yet (or an unreadable alias): import anew
        return None
    m = artifact.manifest
    same = m.get("task") == TASK and m.get("kind") == KIND_BASE and m.get("source") == source
    return artifact if same and m.get("weights_sha256") == digest else None


def import_base(ref: str, name: str | None, settings: Settings) -> Artifact:
    """Publish base ``ref`` (``hf:``, a folder in the data roots) as the ``generate`` base
    artifact ``name`` (default: from the reference) and return it; a store reference is
    returned as it is once checked to be a generate base."""
    parsed = parse_model_ref(ref, field="base")
    store = Store(settings.store_root)
    if parsed.kind == "store":
        artifact = store.resolve(parsed.name, field="base")
        if artifact.task != TASK or artifact.manifest.get("kind") != KIND_BASE:
            kind = artifact.manifest.get("kind") or artifact.task
            raise InvalidRequest(
                f"Model {artifact.id} is a {artifact.task!r} {kind} model, not a generate "
                "base; name a base imported with `fnbundle models import`, a hf: reference "
                "or a folder.",
                field="base",
            )
        return artifact
    folder = resolve_model_dir(ref, settings, field="base")
    check_causal_lm(read_config(folder), ref)
    if not any(folder.glob("*.safetensors")):
        raise InvalidRequest(f"Base {ref!r} has no .safetensors weights.", field="base")
    source, revision = _source(ref, folder)
    digest = weights_digest(folder)
    name = name or default_name(ref)
    found = _existing(store, name, source, digest)
    if found is not None:
        return found
    return publish_base(store, folder, name, source=source, revision=revision, digest=digest)


def publish_base(
    store: Store,
    folder: Path,
    name: str,
    *,
    source: str,
    revision: str | None,
    digest: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Artifact:
    """Copy the base files of model folder ``folder`` into a new version of ``name`` and
    publish it with the base manifest (``extra`` adds fields, e.g. what a merge came from)."""
    from fnbundle.platforms.sizing import model_shape

    config = read_config(folder)
    architecture = check_causal_lm(config, str(folder))
    shape = model_shape(folder, freeze_embeddings=False)
    context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    with store.staging(name) as staged:
        for path in [*sorted(folder.glob("*.safetensors")), *(folder / f for f in BASE_FILES)]:
            if path.is_file():
                shutil.copyfile(path, staged / path.name)  # the real file, never a link
        manifest: dict[str, Any] = {
            "name": name,
            "task": TASK,
            "kind": KIND_BASE,
            "context_length": context,
            "architecture": architecture,
            "parameters": shape.n_params,
            "dtype": _dtype(config, folder),
            "source": source,
            "revision": revision,
            "base_model": source,
            "weights_sha256": digest or weights_digest(folder),
            # Either engine serves a base; auto: vLLM where CUDA and vLLM are importable.
            "backends": ["transformers", "vllm"],
            "default_backend": "auto",
            **(extra or {}),
        }
        return store.publish(staged, manifest)
