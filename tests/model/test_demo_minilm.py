"""The demo path with the real packaged MiniLM: what `make run` trains and serves.

The model is judged on three sets it never trained on: the held-out rows of
data/reviews.csv (full reviews), data/reviews_unseen.csv (domains it never saw) and
data/reviews_short.csv (the short texts people type first), through the default int8
backend a user gets.
"""

import csv
from pathlib import Path
from typing import Any

import pytest
from fnbundle.loading import load_model
from fnbundle.settings import Settings
from fnbundle.training.metrics import classification_metrics
from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

from tests.conftest import REPO, SHIPPED_REVIEWS

pytestmark = [
    pytest.mark.model,
    pytest.mark.slow,  # trains MiniLM: minutes on 2 cores
    pytest.mark.timeout(1800),  # the training is the first test's setup, beside other tests
]

UNSEEN = REPO / "data" / "reviews_unseen.csv"
SHORT = REPO / "data" / "reviews_short.csv"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # The threads the test process may use (one per xdist worker, tests/conftest.py): two
    # threads beside the other worker's one made the training 3.5x slower than alone. The
    # thread count sets the order of float sums, so the figures differ from `make run`'s
    # (two threads) by a few examples; the thresholds hold at both counts.
    settings = Settings(store=tmp_path_factory.mktemp("demo-store"), data_roots=[REPO])
    result = train_classifier(
        TrainClassifierParams(data=str(SHIPPED_REVIEWS), name="sentiment"), settings
    )
    return settings, result


def served_metrics(settings: Settings, path: Path) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-length figures of the served model on a CSV it never saw."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    model = load_model("sentiment", settings, task="classify")  # default backend: int8 ONNX
    labels = ["negative", "positive"]
    predictions = model.predict([r["text"] for r in rows])
    return classification_metrics(
        [labels.index(r["label"]) for r in rows],
        [labels.index(p["label"]) for p in predictions],
        labels,
        texts=[r["text"] for r in rows],
    )


def test_demo_model_reaches_090_on_the_held_out_split(demo):
    _, result = demo
    assert result.metrics["accuracy"] >= 0.90
    assert result.metrics["macro_f1"] >= 0.90
    assert result.default_backend == "onnx-int8"  # the int8 export passed parity


def test_demo_model_generalises_to_reviews_it_has_never_seen(demo):
    settings, _ = demo
    m = served_metrics(settings, UNSEEN)
    assert m["accuracy"] >= 0.90 and m["macro_f1"] >= 0.90


def test_demo_model_is_right_on_short_texts_it_has_never_seen(demo):
    settings, _ = demo
    m = served_metrics(settings, SHORT)
    short = m["by_length"]["1-5"]
    assert short["examples"] >= 100
    # Measured with the shipped defaults: 130 of 134 (0.970) on one thread and on two; the
    # target is 0.95.
    assert short["accuracy"] >= 0.95 and short["macro_f1"] >= 0.95
    assert m["accuracy"] >= 0.95


def test_the_first_texts_a_new_user_types_get_the_expected_label(demo):
    # None of these is in the training rows: what a web developer tries first.
    settings, _ = demo
    expected = {
        "Loved it": "positive",
        "Great value, would buy again.": "positive",
        "Would recommend.": "positive",
        "Hated it": "negative",
        "Would not recommend.": "negative",
        "Awful value, never buying again.": "negative",
    }
    model = load_model("sentiment", settings, task="classify")
    got = {t: p["label"] for t, p in zip(expected, model.predict(list(expected)), strict=True)}
    assert got == expected
