"""The request and response of ``POST /v1/classify``, and the limits a request is checked against.

Key rule: :func:`check_limits` runs before any model work and raises only
``fnbundle.errors`` (a 400 naming the field and the limit). The limits come from the
settings (``FNB_MAX_TEXTS``, ``FNB_MAX_TEXT_CHARS``), so the gateway's OpenAPI document
states them from the same settings (:func:`document_limits`), not the schema's defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fnbundle.errors import InvalidRequest, LimitExceeded
from fnbundle.loading import encodable
from fnbundle.settings import Settings

BackendName = Literal["auto", "onnx-int8", "onnx-fp32", "openvino-bf16", "torch"]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Store model name (newest version) or version id.")
    texts: list[str] = Field(
        description="Texts to classify: 1 to FNB_MAX_TEXTS of them, each with a non-space "
        "character and at most FNB_MAX_TEXT_CHARS characters."
    )
    backend: BackendName | None = Field(
        None, description="Inference backend; default: the model's best parity-checked export."
    )


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Probability of the predicted label.")
    scores: dict[str, float] = Field(description="Probability of every label.")


class ClassifyResponse(BaseModel):
    model: str = Field(description="The version id that answered.")
    backend: str
    predictions: list[Prediction]


def check_limits(request: ClassifyRequest, settings: Settings) -> None:
    s = settings
    if not request.texts:
        raise LimitExceeded(
            f"texts is empty: send between 1 and {s.max_texts} texts.", field="texts"
        )
    if len(request.texts) > s.max_texts:
        raise LimitExceeded(
            f"Too many texts: {len(request.texts)} > the limit of {s.max_texts} per request.",
            field="texts",
        )
    for i, text in enumerate(request.texts):
        if len(text) > s.max_text_chars:
            raise LimitExceeded(
                f"texts[{i}] has {len(text)} characters, over the limit of {s.max_text_chars}.",
                field=f"texts.{i}",
            )
        if not text.strip():
            raise InvalidRequest(f"texts[{i}] is empty.", field=f"texts.{i}")
        if not encodable(text):
            raise InvalidRequest(
                f"texts[{i}] is not valid Unicode text (a lone UTF-16 surrogate such as "
                "\\ud800 cannot be encoded); send UTF-8 text.",
                field=f"texts.{i}",
            )


def document_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Write this gateway's text limits into ``ClassifyRequest``'s OpenAPI schema."""
    texts = schema.get("properties", {}).get("texts")
    if texts is None:
        return
    texts.update(minItems=1, maxItems=settings.max_texts)
    texts.setdefault("items", {}).update(
        minLength=1, maxLength=settings.max_text_chars, pattern=r"\S"
    )
