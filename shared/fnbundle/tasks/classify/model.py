"""The ``classify`` task's model: a tokenizer plus one inference backend, labels from the manifest.

Backends: ``onnx-int8`` (dynamic int8 quantization, the default when its export passed
the parity check), ``onnx-fp32``, ``openvino-bf16`` (``model.onnx`` through OpenVINO with
bf16 matrix products: ``auto`` takes it over the ONNX default on CPUs with AMX when it
passes the export's int8 parity rule against ONNX Runtime fp32 at load,
:mod:`fnbundle.runtime.openvino`) and ``torch``. Every backend tokenizes with the same
``tokenizer.json`` through the ``tokenizers`` library and pads per batch (to the longest
text in it, never to a fixed length), so the backends see identical inputs. A gathered
batch whose lengths differ widely runs as a few length groups (``FNB_BATCH_SPLIT_TOKENS``),
each padded to its own longest text.

Key rules: the ONNX path imports neither torch nor transformers; a gateway that serves
ONNX models starts in about a second. A model that cannot serve (weights a backend cannot
read, a tokenizer that does not parse, an output width that disagrees with the labels, a
warm-up that fails or gives non-finite scores) fails at load with
:class:`~fnbundle.errors.ArtifactCorrupt` naming the reason, never per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fnbundle.errors import ArtifactCorrupt
from fnbundle.runtime import artifacts, openvino
from fnbundle.runtime.artifacts import ONNX_FILES, OPENVINO_FILES
from fnbundle.runtime.batching import run_by_length
from fnbundle.runtime.onnx import RunFn, corrupt_on_error, onnx_runner, softmax
from fnbundle.runtime.tokenizer import (
    TOKENIZER_FILE,
    encode,
    load_tokenizer,
    pad,
    pad_id,
    token_ids,
)
from fnbundle.settings import Settings
from fnbundle.store import Artifact

# backend -> the weights file it reads (``auto`` without a default takes the last one present)
BACKEND_FILES = {**ONNX_FILES, "torch": "model.safetensors"}


def pick_backend(artifact: Artifact, requested: str) -> str:
    """The classify backend serving ``artifact`` (``auto``: its parity-checked default, or
    the gated key ``auto`` where OpenVINO may serve it)."""
    return artifacts.pick_onnx_task_backend(artifact, requested, BACKEND_FILES)


def int8_rule(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """The export's int8 parity rule (label agreement, mean probability difference)."""
    from fnbundle.training.export import parity  # numpy only: no torch, no onnx

    return parity(reference, candidate, "onnx-int8")


def runner(artifact: Artifact, backend: str, settings: Settings) -> RunFn:
    """The forward pass of ``backend`` on ``artifact``'s weights."""
    if backend == "torch":
        run, _ = torch_runner(str(artifact.path), settings)
    elif backend == openvino.BACKEND:  # a 400 with FNB_OPENVINO=off
        run, _ = openvino.openvino_runner(str(artifact.file(openvino.FILE)), settings)
    else:
        run, _ = onnx_runner(str(artifact.file(BACKEND_FILES[backend])), settings)
    return run


def torch_runner(folder: str, settings: Settings) -> tuple[RunFn, set[str]]:
    """The safetensors weights through transformers (imported here, never at module load)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(settings.thread_count)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=False
    )
    model.eval()
    names = {"input_ids", "attention_mask"}
    if getattr(model.config, "type_vocab_size", 0):
        names.add("token_type_ids")

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: torch.from_numpy(v) for k, v in inputs.items() if k in names}
        with torch.inference_mode():
            return model(**feed).logits.float().numpy()

    return run, names


def manifest_labels(artifact: Artifact) -> Any:
    """The ``labels`` a classifier's manifest lists, as written (checked at load)."""
    return artifact.manifest.get("labels")


def listed_labels(artifact: Artifact) -> list[str]:
    """The label names for listings; a malformed list reads as none (loading refuses it)."""
    labels = manifest_labels(artifact)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return []
    return labels


class TextClassifier:
    """Texts in, label probabilities out. Thread-compatible: one forward at a time."""

    def __init__(
        self,
        model_id: str,
        labels: Sequence[str],
        backend: str,
        tokenizer: Any,
        run: RunFn,
        *,
        split_tokens: int = 0,
    ):
        self.model_id = model_id
        self.labels = list(labels)
        self.backend = backend
        self._tokenizer = tokenizer
        self._pad_id = pad_id(tokenizer)
        self._run = run
        self._split_tokens = split_tokens  # a pass's cost in padded tokens (0: never split)

    @staticmethod
    def files_for(artifact: Artifact, backend: str) -> list[str]:
        if backend == openvino.GATED:  # both candidates: the gate runs them side by side
            weights = [openvino.FILE, ONNX_FILES[artifacts.onnx_default(artifact)]]
            return [*dict.fromkeys(weights), TOKENIZER_FILE]
        files = [{**OPENVINO_FILES, **BACKEND_FILES}[backend], TOKENIZER_FILE]
        if backend == "torch":
            files.append("config.json")
        return files

    @classmethod
    def load(cls, artifact: Artifact, backend: str, settings: Settings) -> TextClassifier:
        if backend == openvino.GATED:
            return openvino.gated_load(
                artifact.id,
                lambda chosen: cls.load(artifact, chosen, settings),
                artifacts.onnx_default(artifact),
                lambda model: model.predict_proba(openvino.PROBE_TEXTS),
                int8_rule,
                settings,
                combine=cls.small_passes_on,
            )
        labels = manifest_labels(artifact)
        if (
            not isinstance(labels, list)
            or len(labels) < 2
            or not all(isinstance(label, str) for label in labels)
            or len(set(labels)) != len(labels)
        ):
            raise ArtifactCorrupt(
                f"Model {artifact.id}: its manifest needs a list of two or more distinct "
                f"label names, not {str(labels)[:200]}."
            )
        with corrupt_on_error(artifact, f"reading {TOKENIZER_FILE}"):
            tokenizer = load_tokenizer(
                artifact.file(TOKENIZER_FILE),
                artifact.manifest.get("tokenizer", {}),
                settings.max_input_tokens,
            )
        with corrupt_on_error(
            artifact, f"loading {TextClassifier.files_for(artifact, backend)[0]}"
        ):
            run = runner(artifact, backend, settings)
        model = cls(
            artifact.id, labels, backend, tokenizer, run, split_tokens=settings.batch_split_tokens
        )
        model.warm_up()
        return model

    def small_passes_on(self, other: TextClassifier) -> TextClassifier:
        """This model with its passes under :func:`~fnbundle.runtime.openvino.min_tokens`
        padded tokens and rows under :func:`~fnbundle.runtime.openvino.min_row_tokens` run
        by ``other`` (OpenVINO's fixed cost per run loses there)."""
        self._run = openvino.by_backend(other._run, self._run, other.backend)
        return self

    def warm_up(self) -> None:
        """The first run allocates; it also proves the model answers one score per label."""
        with corrupt_on_error(self.model_id, "the warm-up run"):
            logits = self._run(self.encode(["warm-up"]))
        shape: tuple[int, ...] = tuple(np.shape(logits))
        if len(shape) != 2 or shape[0] != 1 or shape[1] != len(self.labels):
            raise ArtifactCorrupt(
                f"Model {self.model_id} outputs scores of shape {tuple(shape)} per text, but "
                f"its manifest lists {len(self.labels)} labels ({', '.join(self.labels)})."
            )
        if not np.isfinite(logits).all():
            raise ArtifactCorrupt(f"Model {self.model_id} gives non-finite scores (NaN or inf).")

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return encode(self._tokenizer, texts)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, truncated, unpadded (what the batcher gathers)."""
        return token_ids(self._tokenizer, texts)

    def predict_tokens(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Label probabilities per token array, in length groups padded each to its
        longest."""
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return run_by_length(
            ids,
            [len(row) for row in ids],
            lambda group: softmax(self._run(pad(group, self._pad_id))),
            self._split_tokens,
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Label probabilities per text: what the dynamic batcher calls."""
        return self.predict_tokens(self.tokenize(texts))

    def format(self, probs: np.ndarray) -> list[dict[str, Any]]:
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append(
                {
                    "label": self.labels[best],
                    "score": float(row[best]),
                    "scores": {label: float(p) for label, p in zip(self.labels, row, strict=True)},
                }
            )
        return out

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return self.format(self.predict_proba(texts))
