"""Benchmark inputs: the realistic short reviews the project ships, and 128-token texts.

Key rule: every system under test gets the same texts in the same order; the long texts
are built from real reviews and checked with the model's own tokenizer to reach the
128-token truncation, so "128-token inputs" means exactly that for every system.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REVIEW_FILES = (REPO / "data" / "reviews.csv", REPO / "data" / "reviews_unseen.csv")
LONG_TOKENS = 128  # tokens: the serving truncation length (FNB_MAX_TOKENS default)
SEED = 1234  # fixed shuffle: rounds and systems see the same sequence


def short_reviews(files: tuple[Path, ...] = REVIEW_FILES, seed: int = SEED) -> list[str]:
    """Every review text from the demo data sets, shuffled reproducibly."""
    texts: list[str] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as f:
            texts.extend(row["text"] for row in csv.DictReader(f) if row["text"].strip())
    random.Random(seed).shuffle(texts)
    return texts


def long_texts(
    tokenizer_file: Path, count: int = 200, tokens: int = LONG_TOKENS, seed: int = SEED
) -> list[str]:
    """``count`` texts of real reviews joined until each has more than ``tokens`` tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    reviews = short_reviews(seed=seed)
    rng = random.Random(seed + 1)
    out: list[str] = []
    while len(out) < count:
        parts: list[str] = []
        # +2: [CLS] and [SEP]; strictly more than ``tokens`` so truncation always applies
        while len(tokenizer.encode(" ".join(parts)).ids) <= tokens + 2:
            parts.append(rng.choice(reviews))
        out.append(" ".join(parts))
    return out
