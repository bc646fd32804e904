"""Which backend serves an artifact: the weights files its manifest lists decide.

Key rule: ``auto`` takes the artifact's ``default_backend`` (the best export that passed
its parity check) when that backend's file is there, else the last available one in the
task's order; a backend the artifact lacks is a 400 naming the ones it has.
"""

from __future__ import annotations

from collections.abc import Mapping

from fnbundle.errors import InvalidRequest, ModelNotReady
from fnbundle.store import Artifact

# backend -> the weights file it reads, for every task served through ONNX Runtime
ONNX_FILES = {"onnx-int8": "model.int8.onnx", "onnx-fp32": "model.onnx"}


def available_backends(artifact: Artifact, files: Mapping[str, str] = ONNX_FILES) -> list[str]:
    listed = artifact.manifest.get("files", {})
    return [backend for backend, name in files.items() if name in listed]


def pick_backend(artifact: Artifact, requested: str, files: Mapping[str, str] = ONNX_FILES) -> str:
    """``auto`` takes the artifact's default (the best export that passed parity)."""
    available = available_backends(artifact, files)
    if not available:
        raise ModelNotReady(f"Artifact {artifact.id} has no loadable weights.")
    if requested == "auto":
        default = artifact.manifest.get("default_backend")
        return default if default in available else available[-1]
    if requested not in available:
        raise InvalidRequest(
            f"Model {artifact.id} has no {requested} backend; available: {', '.join(available)}.",
            field="backend",
        )
    return requested
