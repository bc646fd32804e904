"""The pictures a tabular run publishes beside its model: one per model trained (a
classifier's confusion matrix, a regressor's predicted against actual values on the
held-out rows) and the leaderboard of a compare run as a bar chart.

Key rule: pictures are for people; a picture that cannot be drawn is logged and left
out, never a failed job. Files are PNGs named ``pictures/<model>.png`` and
``pictures/leaderboard.png`` inside the artifact (GET /v1/models/{id}/files/{path}).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FOLDER = "pictures"
MAX_POINTS = 5000  # held-out rows drawn in a predicted-vs-actual plot
MAX_CLASSES_ANNOTATED = 12  # cells get their counts written up to this many classes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    cm = np.asarray(matrix)
    size = min(3 + 0.45 * len(labels), 12)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    if len(labels) <= MAX_CLASSES_ANNOTATED:
        threshold = cm.max() / 2 if cm.size else 0
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > threshold else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predicted_png(actual: np.ndarray, predicted: np.ndarray, path: Path, title: str) -> None:
    plt = _pyplot()
    if len(actual) > MAX_POINTS:
        keep = np.random.default_rng(0).choice(len(actual), MAX_POINTS, replace=False)
        actual, predicted = actual[keep], predicted[keep]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(actual, predicted, s=8, alpha=0.5)
    low = float(min(actual.min(), predicted.min()))
    high = float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="perfect")
    ax.set(xlabel="actual", ylabel="predicted", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def leaderboard_png(board: list[dict[str, Any]], main: str, path: Path, title: str) -> None:
    """One bar per model, best on top, with its held-out ``main`` score."""
    plt = _pyplot()
    names = [c["model"] for c in board][::-1]
    scores = [float(c["metrics"][main]) for c in board][::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(names)))
    bars = ax.barh(names, scores, color=["#4c78a8"] * (len(names) - 1) + ["#f58518"])
    ax.bar_label(bars, labels=[f"{s:.3f}" for s in scores], padding=3)
    low = min(0.0, *scores)
    ax.set_xlim(low, max(1.0, *scores) * 1.12 if low >= 0 else max(scores) * 1.12)
    ax.set(xlabel=f"{main} (held-out rows)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw(
    folder: Path,
    *,
    task: str,
    main: str,
    board: list[dict[str, Any]],
    answers: dict[str, np.ndarray],
    actual: np.ndarray,
    title: str,
) -> list[str]:
    """Every picture of a run into ``folder / FOLDER``; the relative paths written."""
    out = folder / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for candidate in board:
        name = candidate["model"]
        path = out / f"{name}.png"
        try:
            if task == "classification":
                cm = candidate["metrics"]["confusion_matrix"]
                confusion_png(cm["matrix"], cm["labels"], path, f"{title}: {name}")
            else:
                predicted_png(actual, answers[name], path, f"{title}: {name}")
        except Exception:
            log.warning("no picture for %s", name, exc_info=True)
            continue
        written.append(f"{FOLDER}/{path.name}")
    if len(board) > 1:
        path = out / "leaderboard.png"
        try:
            leaderboard_png(board, main, path, f"{title}: leaderboard")
            written.append(f"{FOLDER}/{path.name}")
        except Exception:
            log.warning("no leaderboard picture", exc_info=True)
    return written
