"""Training a classifier end to end with a tiny random-init BERT (seconds, not minutes)."""

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from fnbundle.errors import TrainingFailed
from fnbundle.loading import load_model
from fnbundle.settings import Settings
from fnbundle.store import Store, sha256_file
from fnbundle.tasks.train_classifier.params import TrainClassifierParams
from fnbundle.training.metrics import length_bucket
from fnbundle.training.text_classifier import train_classifier

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
    # Per-length figures, with as many rows per length as the held-out split holds.
    with REVIEWS.open(newline="", encoding="utf-8") as f:
        held_out = [r["text"] for r in csv.DictReader(f) if r["split"] == "test"]
    counts = Counter(length_bucket(t) for t in held_out)
    assert set(counts) == {"1-5", "6-20", "21+"}  # the fixed set has every length
    assert {b: v["examples"] for b, v in metrics["by_length"].items()} == counts
    for bucket in metrics["by_length"].values():
        assert 0 <= bucket["accuracy"] <= 1 and 0 <= bucket["macro_f1"] <= 1
    assert m["metrics"]["by_length"] == metrics["by_length"] == result.metrics["by_length"]
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
        b: load_model("tiny", settings, b, task="classify").predict_proba(texts)
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


def test_cli_summary_shows_accuracy_per_length_and_marks_an_empty_length(tiny_base, tmp_path):
    """A user whose data has no long texts sees that, not a made-up figure."""
    with REVIEWS.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if length_bucket(r["text"]) != "21+"]
    data = tmp_path / "no-long.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    env = {
        "FNB_STORE": str(tmp_path / "store"),
        "FNB_DATA_ROOTS": f"{tmp_path},{tiny_base.parent}",
        "COLUMNS": "120",
        "PATH": "/usr/bin:/bin",
        # the worker's thread cap (tests/conftest.py): every core would crowd the other worker
        **{k: os.environ[k] for k in ("FNB_THREADS", "OMP_NUM_THREADS") if k in os.environ},
    }
    args = ["--data", str(data), "--name", "nolong", "--base", str(tiny_base), "--epochs", "1"]
    run = subprocess.run(
        [sys.executable, "-m", "fnbundle.cli", "train", "classifier", *args, "--no-onnx"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    table = run.stdout[run.stdout.index("held-out by length") :]
    rows = [[c for c in re.split(r"[\s│┃|]+", line) if c] for line in table.splitlines()]
    shown = {r[0]: r[1:] for r in rows if r and r[0] in ("1-5", "6-20", "21+")}
    metrics = json.loads(
        (Store(tmp_path / "store").resolve("nolong").path / "metrics.json").read_text()
    )
    by_length = metrics["by_length"]
    assert by_length["21+"] is None and shown["21+"] == ["0", "-", "-"]
    for bucket in ("1-5", "6-20"):
        figures = by_length[bucket]
        assert shown[bucket] == [
            str(figures["examples"]),
            f"{figures['accuracy']:.3f}",
            f"{figures['macro_f1']:.3f}",
        ]


def test_a_training_job_reports_accuracy_per_length(tmp_path, tiny_base):
    from fnbundle.jobs.manager import JobManager
    from fnbundle.jobs.schema import JobStatus, JobSubmit

    from tests.model.test_jobs import job_settings, params, wait_terminal

    manager = JobManager(job_settings(tmp_path, tiny_base), max_running=1)
    manager.start()
    try:
        body = {"task": "train_classifier", "params": params(tiny_base, "bylen", epochs=1)}
        job, _ = manager.submit(JobSubmit.model_validate(body))
        done = wait_terminal(manager, job.id)
    finally:
        manager.stop()
    assert done.status == JobStatus.succeeded, done.error
    artifact = Store(manager.settings.store_root).resolve("bylen")
    assert set(done.metrics["by_length"]) == {"1-5", "6-20", "21+"}
    assert done.metrics["by_length"] == artifact.manifest["metrics"]["by_length"]
