"""Which base model and which LoRA adapter a generate request's ``model`` names, and
putting that adapter on the base's engine.

A request names a base (``tiny-llm``, a version id), an adapter (``reviews-lora``: served
on the base its manifest names, ``base.id``), or both as ``"<base>:<adapter>"`` (the base
must be the one the adapter was trained on). The engine knows an adapter by the adapter
artifact's version id, so publishing a new version of a name makes the next request load
and use it while requests already running finish on the old one.

Key rules: the base loads once (the model host keeps it); an adapter's files are
hash-checked against its manifest before the engine reads them, once per engine; two
requests for an adapter not yet loaded load it once (the second waits). Nothing here
imports torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fnbundle.errors import ArtifactCorrupt, InvalidRequest, NotFound
from fnbundle.store import Artifact, Store

TASK = "generate"
KIND_BASE = "base"
KIND_ADAPTER = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Files of an artifact that are not read to serve it (reports of a training or an import).
NOT_MODEL_FILES = ("metrics.json", "loss_curve.png")


@dataclass(frozen=True)
class Target:
    """What serves one request: a base, and maybe an adapter on top of it."""

    base: Artifact
    adapter: Artifact | None = None


def kind(artifact: Artifact) -> str:
    """``base`` or ``adapter`` (an artifact that says neither is a base)."""
    return str(artifact.manifest.get("kind") or KIND_BASE)


def base_id(adapter: Artifact) -> str:
    """The store id of the base an adapter was trained on, from its manifest."""
    base = adapter.manifest.get("base")
    found = base.get("id") if isinstance(base, dict) else None
    if not isinstance(found, str) or not found:
        raise ArtifactCorrupt(f"Adapter {adapter.id}: its manifest names no base.id.")
    return found


def _base_of(adapter: Artifact, artifact: Callable[[str], Artifact]) -> Artifact:
    wanted = base_id(adapter)
    try:
        return artifact(wanted)
    except NotFound:
        raise ArtifactCorrupt(
            f"Adapter {adapter.id} was trained on base {wanted}, which is not in the store."
        ) from None


def _check_generate(found: Artifact) -> None:
    if found.task != TASK:
        raise InvalidRequest(
            f"Model {found.id} is a {found.task!r} model, not a text generation model.",
            field="model",
        )


def resolve_target(ref: str, artifact: Callable[[str], Artifact]) -> Target:
    """The base and adapter ``ref`` names; ``artifact`` resolves a store name or id (the
    model host's, so each id is read once)."""
    base_ref, colon, adapter_ref = ref.partition(":")
    if not colon:
        found = artifact(ref)
        _check_generate(found)
        if kind(found) == KIND_ADAPTER:
            return Target(_base_of(found, artifact), found)
        return Target(found)
    base, adapter = artifact(base_ref), artifact(adapter_ref)
    _check_generate(base)
    _check_generate(adapter)
    if kind(base) != KIND_BASE:
        raise InvalidRequest(
            f"{base_ref!r} is an {kind(base)}, not a base model: '<base>:<adapter>' names the "
            "base first.",
            field="model",
        )
    if kind(adapter) != KIND_ADAPTER:
        raise InvalidRequest(
            f"{adapter_ref!r} is a {kind(adapter)} model, not an adapter: '<base>:<adapter>' "
            "names an adapter second.",
            field="model",
        )
    if base_id(adapter) != base.id:
        raise InvalidRequest(
            f"Adapter {adapter.id} was trained on base {base_id(adapter)}, not {base.id}; name "
            "the adapter alone to serve it on its own base.",
            field="model",
        )
    return Target(base, adapter)


class AdapterLoader:
    """Puts adapters on engines: hash-checked, once per engine, one load at a time per
    adapter (blocking: call it in a thread)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, adapter_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(adapter_id, threading.Lock())

    def ensure(self, engine: Any, adapter: Artifact, store: Store) -> None:
        """Make ``adapter`` servable on ``engine`` under its version id."""
        if engine.has_adapter(adapter.id):
            return
        with self._lock(adapter.id):
            if engine.has_adapter(adapter.id):  # loaded while this request waited
                return
            listed = adapter.manifest.get("files", {})
            missing = [f for f in ADAPTER_FILES if f not in listed]
            if missing:
                raise ArtifactCorrupt(
                    f"Adapter {adapter.id} lacks {', '.join(missing)} in its manifest."
                )
            store.verify(adapter, hash_files=ADAPTER_FILES)
            engine.add_adapter(adapter.id, adapter.path)
