"""The demo path with the real packaged MiniLM: what `make run` trains and serves."""

import csv

import pytest
from fnbundle.loading import load_classifier
from fnbundle.settings import Settings
from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

from tests.conftest import REPO, SHIPPED_REVIEWS

pytestmark = pytest.mark.model

UNSEEN = REPO / "data" / "reviews_unseen.csv"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    settings = Settings(store=tmp_path_factory.mktemp("demo-store"), data_roots=[REPO])
    result = train_classifier(
        TrainClassifierParams(data=str(SHIPPED_REVIEWS), name="sentiment"), settings
    )
    return settings, result


def test_demo_model_reaches_090_on_the_held_out_split(demo):
    _, result = demo
    assert result.metrics["accuracy"] >= 0.90
    assert result.metrics["macro_f1"] >= 0.90
    assert result.default_backend == "onnx-int8"  # the int8 export passed parity


def test_demo_model_generalises_to_reviews_it_has_never_seen(demo):
    settings, _ = demo
    with UNSEEN.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    model = load_classifier("sentiment", settings)  # default backend: int8 ONNX
    predictions = model.predict([r["text"] for r in rows])
    correct = sum(p["label"] == r["label"] for p, r in zip(predictions, rows, strict=True))
    assert correct / len(rows) >= 0.85
