"""The serving tokenizer: an artifact's ``tokenizer.json`` through the ``tokenizers`` library.

Key rule: texts are truncated at the smaller of the model's length and
``FNB_MAX_INPUT_TOKENS`` and padded per batch (to the longest text in it, never to a fixed
length), so short texts cost short forward passes and every backend sees identical inputs.

Serving tokenizes in two steps: texts to unpadded token ids (:func:`token_ids`), then each
forward pass pads its group (:func:`pad`), so a batch can be cut into length groups between
the two. :func:`encode` does both at once and gives the same arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(path: Path, meta: dict[str, Any], max_tokens: int) -> Any:
    """The serving tokenizer: truncation at the model's length, padding per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=min(max_tokens, int(meta.get("max_length", 512))))
    tokenizer.enable_padding(
        pad_id=int(meta.get("pad_token_id", 0)), pad_token=str(meta.get("pad_token", "[PAD]"))
    )
    return tokenizer


def pad_id(tokenizer: Any) -> int:
    """The id a batch is padded with (the tokenizer's own, else 0)."""
    padding = tokenizer.padding
    return int(padding["pad_id"]) if padding else 0


def token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids, special tokens included, truncated, unpadded."""
    if len(texts) == 1:  # nothing to pad: one encode, no batch machinery
        return [tokenizer.encode(texts[0]).ids]
    return [e.ids[: sum(e.attention_mask)] for e in tokenizer.encode_batch(list(texts))]


def pad(ids: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, np.ndarray]:
    """The model inputs for token arrays of one segment: padded to the longest."""
    longest = max(len(row) for row in ids)
    input_ids = np.full((len(ids), longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(ids), longest), dtype=np.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": np.zeros_like(input_ids),  # one segment
    }


def encode(tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The model inputs for ``texts`` (one padded batch)."""
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
