"""Classification metrics and the training-curve figure (numpy and matplotlib only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(
    y_true: list[int], y_pred: list[int], labels: list[str]
) -> dict[str, Any]:
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[label] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(f1), 4),
            "support": int(cm[i, :].sum()),
        }
    total = int(cm.sum())
    return {
        "accuracy": round(float(np.trace(cm) / total), 4) if total else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 4),
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": cm.tolist()},
        "eval_examples": total,
    }


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
