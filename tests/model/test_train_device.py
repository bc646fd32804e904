"""Training on CUDA: the same trainer and artifact as on CPU. The CUDA run needs a GPU
(marked ``gpu``); asking for CUDA where there is none is tested everywhere."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from fnbundle.errors import InvalidRequest
from fnbundle.loading import load_model
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

from tests.conftest import REPO, REVIEWS

pytestmark = pytest.mark.model


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def params(tiny_base: Path, name: str, **changes: Any) -> TrainClassifierParams:
    options: dict[str, Any] = {
        "data": str(REVIEWS),
        "name": name,
        "base": str(tiny_base),
        "epochs": 3,
        "learning_rate": 1e-3,
        **changes,
    }
    return TrainClassifierParams(**options)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tiny_base, tmp_path):
    if cuda_available():
        pytest.skip("this machine has a CUDA GPU: the error cannot happen here")
    settings = Settings(store=tmp_path / "store", data_roots=[REPO, tiny_base.parent])
    with pytest.raises(InvalidRequest, match="no CUDA GPU is available") as raised:
        train_classifier(params(tiny_base, "gpu", device="cuda"), settings)
    assert raised.value.field == "device"
    assert not any((tmp_path / "store").rglob("manifest.json"))  # nothing published


@pytest.mark.gpu
def test_a_cuda_run_is_deterministic_and_its_artifact_serves_on_cpu(tiny_base, tmp_path):
    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    settings = Settings(store=tmp_path / "store", data_roots=[REPO, tiny_base.parent])
    first = train_classifier(params(tiny_base, "gpu-a", device="cuda"), settings)
    second = train_classifier(params(tiny_base, "gpu-b", device="cuda"), settings)
    store = Store(settings.store_root)
    shas = [
        store.resolve(name).manifest["files"]["model.safetensors"]["sha256"]
        for name in ("gpu-a", "gpu-b")
    ]
    assert shas[0] == shas[1]  # same seed, same device: the same weights
    assert first.metrics == second.metrics
    assert first.metrics["accuracy"] >= 0.6  # well above chance after 3 epochs
    # Exports and parity checks ran; the artifact serves on CPU like any other, with the
    # accuracy the CUDA run measured.
    with REVIEWS.open(newline="", encoding="utf-8") as f:
        held_out = [row for row in csv.DictReader(f) if row["split"] == "test"]
    model = load_model("gpu-a", settings, task="classify")
    predictions = model.predict([row["text"] for row in held_out])
    correct = sum(p["label"] == r["label"] for p, r in zip(predictions, held_out, strict=True))
    assert correct / len(held_out) == pytest.approx(first.metrics["accuracy"], abs=0.03)


def test_a_tabular_mlp_asking_for_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    from fnbundle.tasks.train_tabular.params import TrainTabularParams
    from fnbundle.training.tabular import train_tabular

    if cuda_available():
        pytest.skip("this machine has a CUDA GPU: the error cannot happen here")
    settings = Settings(store=tmp_path / "store", data_roots=[REPO / "data"])
    p = TrainTabularParams(data=str(REPO / "data" / "churn.csv"), name="mlp",
                           model="mlp_classifier", device="cuda")  # fmt: skip
    with pytest.raises(InvalidRequest, match="no CUDA GPU is available"):
        train_tabular(p, settings)
    assert not any((tmp_path / "store").rglob("manifest.json"))


@pytest.mark.gpu
def test_a_tabular_mlp_trains_on_cuda_and_its_graph_serves_on_cpu(tmp_path):
    from fnbundle.tasks.train_tabular.params import TrainTabularParams
    from fnbundle.training.tabular import train_tabular

    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    settings = Settings(store=tmp_path / "store", data_roots=[REPO / "data"])
    events: list[dict[str, Any]] = []
    p = TrainTabularParams(data=str(REPO / "data" / "churn.csv"), name="mlp",
                           model="mlp_classifier", device="cuda", epochs=20)  # fmt: skip
    result = train_tabular(p, settings, events.append)
    assert next(e for e in events if e["type"] == "eval")  # trained, epoch by epoch
    manifest = result.artifact.manifest
    assert manifest["export"]["onnx"]["passed"]  # the CUDA-trained net, exported, on CPU
    assert result.leaderboard[0].metrics["accuracy"] > 0.7
