"""The serving tokenizer: an artifact's ``tokenizer.json`` through the ``tokenizers`` library.

Key rule: texts are truncated at the smaller of the model's length and
``FNB_MAX_INPUT_TOKENS`` and padded per batch (to the longest text in it, never to a fixed
length), so short texts cost short forward passes and every backend sees identical inputs.
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


def encode(tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The model inputs for ``texts`` (one padded batch)."""
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
