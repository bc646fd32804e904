"""The embedder's parity gate: the texts an export is checked on and the rules its vectors
must meet against the reference (:mod:`fnbundle.tasks.embed.export` computes both sides).

Key rule: fp32 must match the reference to :data:`FP32_MAX_ABS_DIFF` per component; int8
must keep a cosine of at least :data:`INT8_MIN_COSINE` on every text, the one-word ones
included. numpy only, so the server's backend gate imports it without torch or onnx.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FP32_MAX_ABS_DIFF = 1e-4  # per vector component, against the reference
INT8_MIN_COSINE = 0.99  # lowest cosine of any parity text to its reference vector
SHORT_TOKENS = 8  # tokens, special ones included: the parity record splits int8 here

# Fixed, varied texts: one-word and few-word queries (where int8 drifts most: pooling over
# three tokens averages no noise away), sentences, paragraphs, punctuation, numbers, casing,
# accents, other scripts, emoji, and one past 256 tokens so truncation is compared too.
PARITY_TEXTS: tuple[str, ...] = (
    "Hello world!",
    "a",
    "OK",
    "no",
    "ok thanks",
    "sourdough bread recipe",
    "cheap flights to Rome",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email account?",
    "Refunds are processed within 5-7 business days after we receive the item.",
    "The service was slow, but the food arrived warm and tasted great.",
    "I would not recommend this laptop: the battery died after two weeks.",
    "Machine learning models need careful evaluation on held-out data before deployment.",
    "Paris is the capital and most populous city of France.",
    "Une phrase en français, avec des accents: café, naïve, où.",
    "Ein kurzer deutscher Satz über das Wetter in München.",
    "東京は日本の首都です。",
    "Great product 👍🙂 would buy again!!!",
    "ERROR 503: upstream connect error or disconnect/reset before headers.",
    "def add(a, b):\n    return a + b",
    "What is 12 * 7? It is 84.",
    "   leading and trailing spaces   ",
    "UPPERCASE TEXT SHOULD EMBED LIKE LOWERCASE TEXT FOR AN UNCASED MODEL",
    " ".join(
        [
            "Our team shipped a new release yesterday evening after fixing several bugs in "
            "the parser, and the weather tomorrow looks rainy with strong winds near the coast."
        ]
        * 4
    ),
    " ".join(
        [
            "The committee reviewed the annual budget in detail and agreed to fund the "
            "library, two new parks and a bicycle lane along the river before the end of the year."
        ]
        * 4
    ),
    " ".join(["tokens beyond the model's maximum length are cut off"] * 40),
    "Short.",
    "Is this the real life? Is this just fantasy?",
    "Customer says the package was left at the wrong address and wants a replacement.",
)


def compare_rows(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The cosine of each candidate vector to its reference."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return np.asarray((reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12))


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    if reference.shape != candidate.shape:
        return {"passed": False, "shape": list(candidate.shape), "expected": list(reference.shape)}
    cosine = compare_rows(reference, candidate)
    return {
        "max_abs_diff": float(f"{np.abs(reference - candidate).max():.3e}"),
        "min_cosine": round(float(cosine.min()), 5),
        "mean_cosine": round(float(cosine.mean()), 5),
        "examples": len(reference),
    }


def fp32_parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    record = compare(reference, candidate)
    record.setdefault("passed", record.get("max_abs_diff", 1.0) <= FP32_MAX_ABS_DIFF)
    return {**record, "rules": {"max_abs_diff": FP32_MAX_ABS_DIFF}}


def int8_parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    record = compare(reference, candidate)
    record.setdefault("passed", record.get("min_cosine", 0.0) >= INT8_MIN_COSINE)
    return {**record, "rules": {"min_cosine": INT8_MIN_COSINE}}


def min_cosine_by_length(
    reference: np.ndarray, candidate: np.ndarray, tokens: list[int]
) -> dict[str, float]:
    """Where int8 drifts: few-token texts pool over little and average no noise away."""
    cosine = compare_rows(reference, candidate)
    lengths = np.asarray(tokens)
    groups = {
        f"under {SHORT_TOKENS} tokens": lengths < SHORT_TOKENS,
        f"{SHORT_TOKENS} tokens or more": lengths >= SHORT_TOKENS,
    }
    return {k: round(float(cosine[m].min()), 5) for k, m in groups.items() if m.any()}
