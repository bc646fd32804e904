"""A loaded text classifier: tokenizer plus one inference backend.

Backends: ``onnx-int8`` (dynamic int8 quantization, the default when its export passed
the parity check), ``onnx-fp32`` and ``torch``. Every backend tokenizes with the same
``tokenizer.json`` through the ``tokenizers`` library and pads per batch (to the longest
text in it, never to a fixed length), so the backends see identical inputs.

Key rules: the ONNX path imports neither torch nor transformers; a gateway that serves
ONNX models starts in about a second. A model that cannot serve (weights a backend cannot
read, a tokenizer that does not parse, an output width that disagrees with the labels, a
warm-up that fails or gives non-finite scores) fails at load with
:class:`~fnbundle.errors.ArtifactCorrupt` naming the reason, never per request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fnbundle.errors import ArtifactCorrupt, FnbError, InvalidRequest, ModelNotReady
from fnbundle.settings import Settings
from fnbundle.store import Artifact

BACKEND_FILES = {
    "onnx-int8": "model.int8.onnx",
    "onnx-fp32": "model.onnx",
    "torch": "model.safetensors",
}
TOKENIZER_FILE = "tokenizer.json"
log = logging.getLogger(__name__)
RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def available_backends(artifact: Artifact) -> list[str]:
    files = artifact.manifest.get("files", {})
    return [b for b, f in BACKEND_FILES.items() if f in files]


def pick_backend(artifact: Artifact, requested: str) -> str:
    """``auto`` takes the artifact's default (the best export that passed parity)."""
    available = available_backends(artifact)
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


def _threads(settings: Settings) -> int:
    return settings.threads or len(os.sched_getaffinity(0))


def _onnx_runner(path: str, settings: Settings) -> tuple[RunFn, set[str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(settings)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in inputs.items() if k in names}
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    return run, names


def _torch_runner(folder: str, settings: Settings) -> tuple[RunFn, set[str]]:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(_threads(settings))
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


def load_tokenizer(path: Path, meta: dict[str, Any], max_tokens: int) -> Any:
    """The serving tokenizer: truncation at the model's length, padding per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=min(max_tokens, int(meta.get("max_length", 512))))
    tokenizer.enable_padding(
        pad_id=int(meta.get("pad_token_id", 0)), pad_token=str(meta.get("pad_token", "[PAD]"))
    )
    return tokenizer


def encode(tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


@contextmanager
def _corrupt_on_error(artifact: Artifact | str, what: str) -> Iterator[None]:
    """Turn a backend's own exception into ArtifactCorrupt naming the model and ``what``.

    The backend's message is kept (its first line, without the artifact folder) because it
    says what is wrong (``INVALID_PROTOBUF``); the traceback stays in the log.
    """
    model_id = artifact if isinstance(artifact, str) else artifact.id
    try:
        yield
    except FnbError:
        raise
    except Exception as exc:
        log.warning("model %s: %s failed", model_id, what, exc_info=True)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(artifact, Artifact):
            detail = detail.replace(f"{artifact.path}{os.sep}", "").replace(str(artifact.path), "")
        reason = f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__
        raise ArtifactCorrupt(f"Model {model_id}: {what} failed ({reason}).") from None


class TextClassifier:
    """Texts in, label probabilities out. Thread-compatible: one forward at a time."""

    def __init__(
        self, model_id: str, labels: Sequence[str], backend: str, tokenizer: Any, run: RunFn
    ):
        self.model_id = model_id
        self.labels = list(labels)
        self.backend = backend
        self._tokenizer = tokenizer
        self._run = run

    @staticmethod
    def files_for(artifact: Artifact, backend: str) -> list[str]:
        files = [BACKEND_FILES[backend], TOKENIZER_FILE]
        if backend == "torch":
            files.append("config.json")
        return files

    @classmethod
    def load(cls, artifact: Artifact, backend: str, settings: Settings) -> TextClassifier:
        labels = artifact.manifest.get("labels")
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
        with _corrupt_on_error(artifact, f"reading {TOKENIZER_FILE}"):
            tokenizer = load_tokenizer(
                artifact.file(TOKENIZER_FILE),
                artifact.manifest.get("tokenizer", {}),
                settings.max_tokens,
            )
        with _corrupt_on_error(artifact, f"loading {BACKEND_FILES[backend]}"):
            if backend == "torch":
                run, _ = _torch_runner(str(artifact.path), settings)
            else:
                run, _ = _onnx_runner(str(artifact.file(BACKEND_FILES[backend])), settings)
        model = cls(artifact.id, labels, backend, tokenizer, run)
        model.warm_up()
        return model

    def warm_up(self) -> None:
        """The first run allocates; it also proves the model answers one score per label."""
        with _corrupt_on_error(self.model_id, "the warm-up run"):
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

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return softmax(self._run(self.encode(texts)))

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
