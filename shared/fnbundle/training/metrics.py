"""Classification metrics and the training-curve figure (numpy and matplotlib only).

Key rule: overall figures can hide a gap that users meet first (a sentiment model right on
long reviews and wrong on "Loved it"), so a classifier's evaluation also reports accuracy
and macro-F1 per text length, in words (:data:`LENGTH_BUCKETS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# (name, fewest words, most words or None for no limit); words are whitespace-separated.
LENGTH_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1-5", 1, 5),  # what people type into a form first: "Loved it", "meh", "10/10"
    ("6-20", 6, 20),  # a sentence or two
    ("21+", 21, None),  # a full review
)


def _confusion(y_true: list[int], y_pred: list[int], k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    return cm


def _precision_recall_f1(cm: np.ndarray, i: int) -> tuple[float, float, float]:
    tp = cm[i, i]
    precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
    recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def classification_metrics(
    y_true: list[int],
    y_pred: list[int],
    labels: list[str],
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1 over every label, per-class figures and the confusion matrix;
    with ``texts`` (one per row) also ``by_length``, see :func:`metrics_by_length`."""
    cm = _confusion(y_true, y_pred, len(labels))
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for i, label in enumerate(labels):
        precision, recall, f1 = _precision_recall_f1(cm, i)
        f1s.append(f1)
        per_class[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": int(cm[i, :].sum()),
        }
    total = int(cm.sum())
    metrics: dict[str, Any] = {
        "accuracy": round(float(np.trace(cm) / total), 4) if total else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 4),
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": cm.tolist()},
        "eval_examples": total,
    }
    if texts is not None:
        metrics["by_length"] = metrics_by_length(texts, y_true, y_pred, len(labels))
    return metrics


def length_bucket(text: str) -> str:
    """The name of the :data:`LENGTH_BUCKETS` entry that ``text``'s word count falls in."""
    words = max(1, len(text.split()))
    for name, _fewest, most in LENGTH_BUCKETS:
        if most is None or words <= most:
            return name
    raise AssertionError("the last bucket has no upper limit")


def metrics_by_length(
    texts: list[str], y_true: list[int], y_pred: list[int], n_labels: int
) -> dict[str, dict[str, Any] | None]:
    """``{bucket: {"examples", "accuracy", "macro_f1"}}`` for every bucket, in order;
    ``None`` for a bucket with no rows, so the keys are always the same.

    A bucket's macro-F1 averages over the labels that occur in it (as truth or as
    prediction): a bucket of short texts that are all positive, all predicted right,
    scores 1.0, not 0.5 for a negative class it never held.
    """
    if not len(texts) == len(y_true) == len(y_pred):
        raise ValueError("texts, y_true and y_pred must have one entry per row")
    rows: dict[str, list[int]] = {name: [] for name, _, _ in LENGTH_BUCKETS}
    for row, text in enumerate(texts):
        rows[length_bucket(text)].append(row)
    out: dict[str, dict[str, Any] | None] = {}
    for name, members in rows.items():
        if not members:
            out[name] = None
            continue
        cm = _confusion([y_true[r] for r in members], [y_pred[r] for r in members], n_labels)
        present = [i for i in range(n_labels) if cm[i, :].sum() or cm[:, i].sum()]
        f1s = [_precision_recall_f1(cm, i)[2] for i in present]
        out[name] = {
            "examples": len(members),
            "accuracy": round(float(np.trace(cm) / len(members)), 4),
            "macro_f1": round(float(np.mean(f1s)), 4),
        }
    return out


def plot_training_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train loss per step, eval loss and accuracy per epoch, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if h["type"] == "step"]
    evals = [h for h in history if h["type"] == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(
        [s["step"] for s in steps], [s["loss"] for s in steps], label="train loss", alpha=0.7
    )
    if evals:
        ax_loss.plot(
            [e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss"
        )
        ax_acc.plot(
            [e["epoch"] for e in evals], [e["accuracy"] for e in evals], "o-", label="accuracy"
        )
        ax_acc.plot(
            [e["epoch"] for e in evals], [e["macro_f1"] for e in evals], "s--", label="macro-F1"
        )
    ax_loss.set(xlabel="step", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="score", title="Evaluation", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
