"""Store and model helpers for model tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from fnbundle.store import MANIFEST, Artifact, Store


def clone_as(store: Store, artifact: Artifact, name: str) -> Artifact:
    """Publish a copy of ``artifact`` under another name (a fresh, verified version)."""
    with store.staging(name) as staged:
        for item in artifact.path.iterdir():
            if item.name != MANIFEST:
                shutil.copy2(item, staged / item.name)
        manifest = {
            k: v for k, v in artifact.manifest.items() if k not in {"id", "files", "created"}
        }
        return store.publish(staged, {**manifest, "name": name})


def flip_byte(path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def nan_base(base: Path, folder: Path) -> Path:
    """A copy of ``base`` in ``folder`` whose word embeddings are NaN: its first loss is NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, folder)
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if "word_embeddings" in k)
    weights[key][:] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder
