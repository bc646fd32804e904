"""A tabular model as served: the artifact's ONNX graph (preprocessing and model in one)
and the feature encoding its manifest describes.

Key rules: rows are encoded (and checked: a missing, unknown or unreadable column is a 422
naming the cell) before they reach a shared batch; the graph runs on float32 and string
columns; a classifier answers each class's probability, a regressor its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fnbundle.errors import ArtifactCorrupt
from fnbundle.settings import Settings
from fnbundle.store import Artifact
from fnbundle.tabular.features import FeatureSpec

ONNX_FILE = "model.onnx"


@dataclass
class TabularModel:
    model_id: str
    backend: str
    spec: FeatureSpec
    problem: str  # classification or regression
    classes: list[str]
    session: Any

    @staticmethod
    def files_for(artifact: Artifact, backend: str) -> list[str]:
        return [ONNX_FILE]

    @classmethod
    def load(cls, artifact: Artifact, backend: str, settings: Settings) -> TabularModel:
        import onnxruntime as ort

        from fnbundle.runtime.onnx import corrupt_on_error, session_options

        manifest = artifact.manifest
        try:
            spec = FeatureSpec(features=manifest["features"])
            problem = str(manifest["problem"])
            classes = [str(c) for c in manifest.get("classes") or []]
        except (KeyError, ValueError, TypeError) as exc:
            raise ArtifactCorrupt(
                f"Model {artifact.id} has no usable feature list: {exc}."
            ) from None
        options = session_options(settings)  # the gateway's threads and spinning
        with corrupt_on_error(artifact, "its ONNX graph"):
            session = ort.InferenceSession(
                str(artifact.path / ONNX_FILE), options, providers=["CPUExecutionProvider"]
            )
        expected = set(spec.numeric_inputs) | set(spec.categorical_inputs)
        if {i.name for i in session.get_inputs()} != expected:
            raise ArtifactCorrupt(f"Model {artifact.id}'s graph inputs do not match its features.")
        if problem == "classification" and session.get_outputs()[1].shape[-1] not in (
            None,
            len(classes),
        ):
            raise ArtifactCorrupt(
                f"Model {artifact.id} lists {len(classes)} classes its graph lacks."
            )
        return cls(artifact.id, backend, spec, problem, classes, session)

    def encode(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each row as its graph inputs (one scalar per input): a batch's items."""
        arrays = self.spec.encode(rows)
        return [{name: column[i, 0] for name, column in arrays.items()} for i in range(len(rows))]

    def run(self, items: list[dict[str, Any]]) -> np.ndarray:
        """A batch of encoded rows: probabilities ``[n, classes]`` or values ``[n, 1]``."""
        feed = {}
        for name in self.spec.numeric_inputs:
            feed[name] = np.array([item[name] for item in items], dtype=np.float32).reshape(-1, 1)
        for name in self.spec.categorical_inputs:
            feed[name] = np.array([item[name] for item in items], dtype=object).reshape(-1, 1)
        outputs = self.session.run(None, feed)
        if self.problem == "classification":
            return np.asarray(outputs[1], dtype=np.float32)
        return np.asarray(outputs[0], dtype=np.float32).reshape(-1, 1)

    def format(self, out: np.ndarray) -> list[dict[str, Any]]:
        if self.problem == "classification":
            return [
                {
                    "prediction": self.classes[int(np.argmax(row))],
                    "probabilities": {
                        c: round(float(p), 6) for c, p in zip(self.classes, row, strict=True)
                    },
                }
                for row in out
            ]
        return [{"prediction": float(row[0]), "probabilities": None} for row in out]
