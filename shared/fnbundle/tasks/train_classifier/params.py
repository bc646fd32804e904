"""The options of a ``train_classifier`` job, which are also ``fnbundle train classifier``'s
options and the documented job params: one schema, every surface generated from it.

Key rule: this module imports nothing heavy (pydantic and the store's name check), so
the registry, the gateway and a submit check read it without the training stack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnbundle.errors import InvalidRequest
from fnbundle.store import validate_name


class TrainClassifierParams(BaseModel):
    """The options of ``fnbundle train classifier`` (and of a training job)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        min_length=1,
        max_length=1024,  # characters: loading.MAX_PATH_CHARS
        description="CSV or JSONL file with text and label columns.",
    )
    name: str = Field(description="Store name to publish under.")
    base: str = Field(
        "builtin:minilm",
        min_length=1,
        max_length=1024,  # characters: loading.MAX_PATH_CHARS
        description="Base encoder (any model reference).",
    )
    epochs: int = Field(3, ge=1, le=100, description="Most epochs; early stopping may end sooner.")
    learning_rate: float = Field(1.5e-4, gt=0, le=1, description="Peak learning rate.")
    batch_size: int = Field(16, ge=1, le=1024, description="Examples per step.")
    max_length: int = Field(128, ge=8, le=512, description="Tokens kept per text.")
    eval_split: float = Field(0.15, gt=0, lt=0.9, description="Fraction held out for validation.")
    seed: int = Field(
        42,
        ge=0,
        le=2**32 - 1,  # numpy's seed range; torch's is wider
        description="Seed for shuffling, splits and initialisation.",
    )
    patience: int = Field(
        2, ge=0, le=100, description="Epochs without a better eval loss (0 = off)."
    )
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of the steps spent warming the learning rate up."
    )
    text_column: str = Field(
        "text", min_length=1, max_length=200, description="Column holding the text."
    )
    label_column: str = Field(
        "label", min_length=1, max_length=200, description="Column holding the label."
    )
    freeze_embeddings: bool = Field(
        False,
        description="Keep the word-embedding matrix fixed (half of MiniLM's weights).",
        json_schema_extra={"cli": "--freeze-embeddings/--train-embeddings"},
    )
    label_smoothing: float = Field(
        0.1, ge=0, lt=0.5, description="Share of each target spread over the other labels."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train: cpu, cuda, or auto (CUDA when available)."
    )
    export_onnx: bool = Field(
        True,
        description="Export ONNX fp32 and int8, each checked against PyTorch on held-out texts.",
        json_schema_extra={"cli": "--onnx/--no-onnx"},
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return validate_name(value, field="name")
        except InvalidRequest as exc:  # a schema error: reported with its field path
            raise ValueError(exc.message) from None
