"""Which backend serves an artifact: the weights files its manifest lists decide.

Key rule: ``auto`` takes the artifact's ``default_backend`` (the best export that passed
its parity check) when that backend's file is there, else the last available one in the
task's order; a backend the artifact lacks is a 400 naming the ones it has. For the tasks
served through ONNX Runtime (classify, embed) ``openvino-bf16`` reads ``model.onnx`` where
openvino is installed, and ``auto`` resolves to the key ``auto`` where OpenVINO may win on
this CPU: the load then chooses between it and the ONNX default by a parity gate
(:mod:`fnbundle.runtime.openvino`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fnbundle.errors import InvalidRequest, ModelNotReady
from fnbundle.runtime import openvino
from fnbundle.store import Artifact

# backend -> the weights file it reads, for every task served through ONNX Runtime
ONNX_FILES = {"onnx-int8": "model.int8.onnx", "onnx-fp32": "model.onnx"}
# OpenVINO reads the fp32 graph; first in a table, so ``auto`` never falls back to it
OPENVINO_FILES = {openvino.BACKEND: openvino.FILE}


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


def pick_onnx_task_backend(
    artifact: Artifact, requested: str, files: Mapping[str, str] = ONNX_FILES
) -> str:
    """:func:`pick_backend` for a task served through ONNX Runtime, with OpenVINO:
    ``openvino-bf16`` where openvino is installed (a 400 saying so otherwise), and ``auto``
    as the gated key where :func:`~fnbundle.runtime.openvino.auto_candidate` holds."""
    if requested == openvino.GATED and openvino.auto_candidate(artifact, ONNX_FILES):
        return openvino.GATED
    if requested == openvino.BACKEND and not openvino.installed():
        raise InvalidRequest(
            f"The {openvino.BACKEND} backend needs the openvino package, which this server "
            "does not have (pip install 'fnbundle[openvino]').",
            field="backend",
        )
    tables = {**OPENVINO_FILES, **files} if openvino.installed() else dict(files)
    return pick_backend(artifact, requested, tables)


def onnx_default(artifact: Artifact) -> str:
    """The ONNX Runtime backend ``auto`` serves without OpenVINO (the gate's reference)."""
    return pick_backend(artifact, "auto", ONNX_FILES)
