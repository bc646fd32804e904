"""OpenAI's embeddings request and response, and the limits a request is checked against.

The request and response follow OpenAI's ``POST /v1/embeddings`` (and the ``openai`` SDK's
``EmbeddingCreateParams`` / ``CreateEmbeddingResponse``): ``input`` is a string, a list of
strings, one token array or a list of token arrays; ``encoding_format`` is ``float`` or
``base64`` (the little-endian float32 bytes of each vector, which the SDK decodes with
``np.frombuffer(..., dtype="float32")``); ``dimensions`` only where the model allows
truncation; ``user`` is accepted and ignored.

Key rule: :func:`check_request` runs before any model work and raises only
``fnbundle.errors`` (a 400 naming the field and the limit); the OpenAI-shaped error body is
rendered from those by the runtime.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from fnbundle.errors import InvalidRequest, LimitExceeded
from fnbundle.settings import Settings

TokenIds = list[StrictInt]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(
        description="Text to embed, a list of texts, one array of token ids or a list of "
        "them. Token ids are the model's own, special tokens included (as its tokenizer "
        "makes them, e.g. [CLS] ... [SEP]); they are fed to the model as they are."
    )
    model: str = Field(description="Store model name (newest version) or version id.")
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="float: a list of numbers; base64: the vector's little-endian float32 "
        "bytes, base64-encoded.",
    )
    dimensions: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None,
        description="Keep the first N dimensions (re-normalised); only for models whose "
        "manifest says they were trained for truncation (the model's full width is always "
        "accepted).",
    )
    user: str | None = Field(None, description="End-user id; accepted and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens embedded, special tokens included.")
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="The version id that answered.")
    usage: EmbeddingUsage


@dataclass(frozen=True)
class EmbedLimits:
    """What one request may ask of one model: the server's limits and the model's own."""

    max_inputs: int  # inputs per request (FNB_MAX_TEXTS)
    max_input_chars: int  # characters per text (FNB_MAX_TEXT_CHARS)
    max_input_tokens: int  # tokens per token array: the model's maximum sequence length
    vocab_size: int  # token ids must be below this
    dimensions: int  # the model's embedding width
    truncatable: bool  # may ``dimensions`` ask for fewer?

    @classmethod
    def for_model(
        cls,
        settings: Settings,
        *,
        max_tokens: int,
        vocab_size: int,
        dimensions: int,
        truncatable: bool,
    ) -> EmbedLimits:
        return cls(
            max_inputs=settings.max_texts,
            max_input_chars=settings.max_text_chars,
            max_input_tokens=max_tokens,
            vocab_size=vocab_size,
            dimensions=dimensions,
            truncatable=truncatable,
        )


@dataclass(frozen=True)
class CheckedRequest:
    """A request that passed :func:`check_request`: texts or token arrays, never both."""

    texts: list[str] | None
    token_ids: list[list[int]] | None
    dimensions: int | None  # None: the model's full width

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


def _is_token_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], int)


def check_request(request: EmbeddingRequest, limits: EmbedLimits) -> CheckedRequest:
    """Refuse what the model cannot or may not do, before any tokenizing or inference."""
    raw = request.input
    single = isinstance(raw, str) or _is_token_array(raw)
    items: list[Any] = [raw] if single else list(raw)

    def field(i: int, *rest: int) -> str:
        return ".".join(["input", *([] if single else [str(i)]), *map(str, rest)])

    if not items:
        raise LimitExceeded(
            f"input is empty: send between 1 and {limits.max_inputs} inputs.", field="input"
        )
    if len(items) > limits.max_inputs:
        raise LimitExceeded(
            f"Too many inputs: {len(items)} > the limit of {limits.max_inputs} per request.",
            field="input",
        )
    dimensions = _check_dimensions(request.dimensions, limits)
    if isinstance(items[0], str):
        for i, text in enumerate(items):
            if len(text) > limits.max_input_chars:
                raise LimitExceeded(
                    f"{field(i)} has {len(text)} characters, over the limit of "
                    f"{limits.max_input_chars}.",
                    field=field(i),
                )
            if not text.strip():
                raise InvalidRequest(f"{field(i)} is empty.", field=field(i))
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON can escape a lone surrogate such as \ud800
                raise InvalidRequest(
                    f"{field(i)} is not valid Unicode text (a lone UTF-16 surrogate cannot be "
                    "encoded); send UTF-8 text.",
                    field=field(i),
                ) from None
        return CheckedRequest(texts=items, token_ids=None, dimensions=dimensions)
    for i, ids in enumerate(items):
        if not ids:
            raise InvalidRequest(f"{field(i)} is an empty token array.", field=field(i))
        if len(ids) > limits.max_input_tokens:
            raise LimitExceeded(
                f"{field(i)} has {len(ids)} tokens, over the model's limit of "
                f"{limits.max_input_tokens}.",
                field=field(i),
            )
        for j, token in enumerate(ids):
            if not 0 <= token < limits.vocab_size:
                raise InvalidRequest(
                    f"Token id {token} is not in the model's vocabulary (0 to "
                    f"{limits.vocab_size - 1}).",
                    field=field(i, j),
                )
    return CheckedRequest(texts=None, token_ids=items, dimensions=dimensions)


def _check_dimensions(dimensions: int | None, limits: EmbedLimits) -> int | None:
    if dimensions is None or dimensions == limits.dimensions:
        return None
    if not limits.truncatable:
        raise InvalidRequest(
            f"This model does not support dimensions: its {limits.dimensions}-dimensional "
            "vectors were not trained to be truncated; leave dimensions out.",
            field="dimensions",
        )
    if dimensions > limits.dimensions:
        raise InvalidRequest(
            f"dimensions {dimensions} is more than the model's {limits.dimensions}.",
            field="dimensions",
        )
    return dimensions


def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` of each vector, re-normalised to unit length (as OpenAI's
    text-embedding-3 models shorten theirs)."""
    if dimensions is None:
        return vectors
    kept = vectors[:, :dimensions]
    norms = np.linalg.norm(kept, axis=1, keepdims=True)
    return kept / np.maximum(norms, 1e-12)


def encode_base64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def build_response(
    vectors: np.ndarray,
    *,
    model: str,
    prompt_tokens: int,
    encoding_format: Literal["float", "base64"],
) -> EmbeddingResponse:
    rows: Sequence[list[float] | str]
    if encoding_format == "base64":
        rows = [encode_base64(v) for v in vectors]
    else:
        rows = np.asarray(vectors, dtype=np.float32).tolist()
    return EmbeddingResponse(
        data=[Embedding(index=i, embedding=row) for i, row in enumerate(rows)],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )
