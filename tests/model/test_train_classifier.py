"""Training a classifier end to end with a tiny random-init BERT (seconds, not minutes)."""

import json

import numpy as np
import pytest
from fnbundle.errors import TrainingFailed
from fnbundle.loading import load_classifier
from fnbundle.settings import Settings
from fnbundle.store import Store, sha256_file
from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

from tests.conftest import REPO, REVIEWS
from tests.model.helpers import nan_base

pytestmark = pytest.mark.model


def test_artifact_is_complete_and_described_by_its_manifest(tiny_trained):
    settings, result = tiny_trained
    artifact = Store(settings.store_root).resolve("tiny")
    assert artifact.id == result.model_id
    m = artifact.manifest
    assert m["task"] == "classify" and m["labels"] == ["negative", "positive"]
    assert {
        "model.safetensors",
        "model.onnx",
        "model.int8.onnx",
        "tokenizer.json",
        "config.json",
        "metrics.json",
        "training_curves.png",
    } <= set(m["files"])
    for rel, meta in m["files"].items():
        assert sha256_file(artifact.path / rel) == meta["sha256"]
    assert (artifact.path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((artifact.path / "metrics.json").read_text())
    assert metrics["eval_examples"] >= 100  # the held-out split of reviews.csv
    assert set(metrics) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert np.array(metrics["confusion_matrix"]["matrix"]).sum() == metrics["eval_examples"]
    assert set(metrics["per_class"]["positive"]) == {"precision", "recall", "f1", "support"}
    for backend in ("onnx-fp32", "onnx-int8"):
        record = m["export"][backend]
        assert {"agreement", "max_prob_diff", "passed"} <= set(record)
    assert m["export"]["onnx-fp32"]["passed"] and m["export"]["onnx-fp32"]["agreement"] == 1.0
    expected_default = "onnx-int8" if m["export"]["onnx-int8"]["passed"] else "onnx-fp32"
    assert m["default_backend"] == expected_default == result.default_backend


def test_every_backend_gives_the_same_answers(tiny_trained):
    settings, _ = tiny_trained
    texts = ["Arrived broken and support never answered.", "Lovely staff, great food!", "ok"]
    probs = {
        b: load_classifier("tiny", settings, b).predict_proba(texts)
        for b in ("torch", "onnx-fp32", "onnx-int8")
    }
    np.testing.assert_allclose(probs["onnx-fp32"], probs["torch"], atol=1e-4)
    np.testing.assert_allclose(probs["onnx-int8"], probs["torch"], atol=0.15)
    for p in probs.values():
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_tiny_model_learns_the_task(tiny_trained):
    _, result = tiny_trained
    # Random init on 1k reviews full of sarcasm: 0.65 on ~200 held-out is far above chance (0.5).
    assert result.metrics["accuracy"] >= 0.65


def test_training_is_deterministic_for_a_seed(tiny_base, tmp_path):
    def run(folder):
        settings = Settings(store=folder, data_roots=[REPO, tiny_base.parent])
        params = TrainClassifierParams(
            data=str(REVIEWS),
            name="det",
            base=str(tiny_base),
            epochs=1,
            learning_rate=3e-3,
            export_onnx=False,
            seed=7,
        )
        result = train_classifier(params, settings)
        return result, Store(folder).resolve("det")

    (first, a1), (second, a2) = run(tmp_path / "one"), run(tmp_path / "two")
    assert first.metrics == second.metrics
    assert (
        a1.manifest["files"]["model.safetensors"]["sha256"]
        == a2.manifest["files"]["model.safetensors"]["sha256"]
    )


def test_progress_events_are_typed_and_ordered(tiny_base, tmp_path):
    events = []
    settings = Settings(store=tmp_path, data_roots=[REPO, tiny_base.parent])
    params = TrainClassifierParams(
        data=str(REVIEWS),
        name="ev",
        base=str(tiny_base),
        epochs=2,
        learning_rate=3e-3,
        export_onnx=False,
        patience=0,
    )
    train_classifier(params, settings, events.append)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "published"
    steps = [e for e in events if e["type"] == "step"]
    assert [s["step"] for s in steps] == list(range(1, events[0]["total_steps"] + 1))
    assert steps[-1]["eta_s"] == 0
    assert [e["epoch"] for e in events if e["type"] == "eval"] == [1, 2]


def test_nan_loss_stops_training_as_diverged_and_publishes_nothing(tiny_base, tmp_path):
    broken = nan_base(tiny_base, tmp_path / "broken-base")
    settings = Settings(store=tmp_path / "store", data_roots=[REPO, tmp_path])
    params = TrainClassifierParams(data=str(REVIEWS), name="nan", base=str(broken), epochs=1)
    with pytest.raises(TrainingFailed, match="diverged"):
        train_classifier(params, settings)
    assert Store(tmp_path / "store").list() == []
