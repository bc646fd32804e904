"""LoRA adapters resident on one base model, served together in one batch through PEFT.

The base is wrapped in a ``PeftModel`` when the first adapter arrives; later ones are
``load_adapter``-ed next to it. A forward names each row's adapter with PEFT's
``adapter_names`` (``"__base__"`` for the base), so rows of different adapters share a
step; a batch of base rows only runs with the adapters disabled (no LoRA hooks at all).

At most ``max_resident`` adapters stay loaded; past that the least recently used one is
deleted, unless a sequence holds it (queued or running sequences :meth:`acquire` their
adapter and :meth:`release` it when they end), in which case the set stays over its bound
until that sequence ends and the next load evicts again.

Key rules: the model is changed only by :meth:`Adapters.add`, whose caller holds the
engine's model lock (so a load never races a step); a load that fails leaves the model as
it was (the layers a first load injected into the base are taken out again).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter, OrderedDict
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from fnbundle.errors import ArtifactCorrupt, NotFound

BASE_ROW = "__base__"  # PEFT's adapter name for rows of the base model


class Adapters:
    """The model (base or PeftModel) and the LoRA adapters loaded on it."""

    def __init__(self, model: Any, *, model_id: str, max_resident: int = 8):
        self.model = model
        self.model_id = model_id
        self.max_resident = max(max_resident, 1)
        self._wrapped = False  # self.model is a PeftModel
        self._lock = threading.Lock()  # guards the two below (read from the event loop)
        self._resident: OrderedDict[str, Path] = OrderedDict()  # least recently used first
        self._users: Counter[str] = Counter()  # sequences holding each adapter

    def __contains__(self, name: object) -> bool:
        return name in self._resident

    def require(self, name: str | None) -> None:
        """Raise NotFound unless ``name`` (None: the base) can be served now."""
        if name is not None and name not in self._resident:
            raise NotFound(f"Adapter {name} is not loaded on model {self.model_id}.")

    def acquire(self, name: str | None) -> None:
        """A sequence will use ``name``: keep it resident until :meth:`release`."""
        if name is None:
            return
        with self._lock:
            self.require(name)
            self._users[name] += 1
            self._resident.move_to_end(name)

    def release(self, name: str | None) -> None:
        if name is not None:
            with self._lock:
                self._users[name] -= 1

    def forward_args(self, names: list[str | None]) -> tuple[AbstractContextManager[Any], dict]:
        """The context and keyword arguments of a forward whose rows use ``names``."""
        if not self._wrapped:
            return contextlib.nullcontext(), {}
        if all(name is None for name in names):
            return self.model.disable_adapter(), {}
        return contextlib.nullcontext(), {"adapter_names": [n or BASE_ROW for n in names]}

    def add(self, name: str, folder: Path) -> None:
        """Load the PEFT LoRA folder as ``name`` (kept if resident), then evict past the
        bound. The caller holds the engine's model lock."""
        with self._lock:
            if name in self._resident:
                self._resident.move_to_end(name)
                return
        check_lora_folder(name, folder)
        self._load(name, folder)
        with self._lock:
            self._resident[name] = folder
            idle = [n for n in self._resident if self._users[n] <= 0]
            victims = idle[: max(len(self._resident) - self.max_resident, 0)]
            for victim in victims:
                del self._resident[victim]
                self._users.pop(victim, None)
        for victim in victims:
            self.model.delete_adapter(victim)

    def _load(self, name: str, folder: Path) -> None:
        from peft import PeftModel

        try:
            if self._wrapped:
                self.model.load_adapter(str(folder), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
                self._wrapped = True
            self.model.eval()
        except Exception as exc:  # a bad adapter must not take the engine down
            self._undo(name)
            raise ArtifactCorrupt(
                f"Adapter {name} cannot be loaded on model {self.model_id}: {exc}"
            ) from exc

    def _undo(self, name: str) -> None:
        """Remove what a failed load left: the adapter, or on a first load the LoRA layers
        already injected into the base."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self._wrapped:
            if name in self.model.peft_config:
                with contextlib.suppress(Exception):
                    self.model.delete_adapter(name)
            return
        for path, module in list(self.model.named_modules()):
            if isinstance(module, BaseTunerLayer) and path:
                parent_path, _, child = path.rpartition(".")
                setattr(self.model.get_submodule(parent_path), child, module.get_base_layer())
        if "peft_config" in vars(self.model):  # the tuner sets it on the base
            del self.model.peft_config


def check_lora_folder(name: str, folder: Path) -> None:
    """Refuse a folder that is not a PEFT LoRA adapter in safetensors before touching the
    model (only LoRA takes part in PEFT's mixed-adapter batches)."""
    config = folder / "adapter_config.json"
    if not config.is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise ArtifactCorrupt(
            f"Adapter {name} needs adapter_config.json and adapter_model.safetensors in {folder}."
        )
    try:
        peft_type = json.loads(config.read_text()).get("peft_type")
    except (ValueError, AttributeError) as exc:
        raise ArtifactCorrupt(f"Adapter {name}: adapter_config.json is not valid: {exc}") from exc
    if peft_type != "LORA":
        raise ArtifactCorrupt(f"Adapter {name} is a {peft_type} adapter; only LoRA is served.")
