"""Settings and job outputs shared by the RunPod handlers."""

from __future__ import annotations

import json

import pytest
from fnbundle.endpoints import get_endpoint
from fnbundle.errors import NotFound
from fnbundle.runpod_worker import (
    job_output,
    preload_endpoint_model,
    worker_concurrency,
    worker_settings,
)
from fnbundle.settings import Settings


def test_without_a_volume_the_environment_decides(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FNB_STORE", str(tmp_path / "store"))
    settings = worker_settings(tmp_path / "no-volume")
    assert settings.store == tmp_path / "store"


def test_a_mounted_volume_holds_the_store_and_the_data(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FNB_STORE", raising=False)
    monkeypatch.delenv("FNB_DATA_ROOTS", raising=False)
    settings = worker_settings(tmp_path)
    assert settings.store == tmp_path / "fnbundle" / "store"
    assert settings.data_roots == [tmp_path]


def test_settings_from_the_environment_win_over_the_volume(tmp_path, monkeypatch):
    monkeypatch.setenv("FNB_STORE", str(tmp_path / "mine"))
    monkeypatch.delenv("FNB_DATA_ROOTS", raising=False)
    settings = worker_settings(tmp_path)
    assert settings.store == tmp_path / "mine"
    assert settings.data_roots == [tmp_path]


def test_an_error_body_travels_as_a_json_string():
    body = NotFound("no model 'x'", field="model").to_body()
    output = job_output(body)
    assert isinstance(output["error"], str)
    assert json.loads(output["error"]) == body["error"]
    good = {"model": "m", "predictions": []}
    assert job_output(good) is good


def test_a_worker_preloads_its_endpoints_model_unless_told(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FNB_PRELOAD", raising=False)
    assert preload_endpoint_model(Settings(), "sentiment").preload == ["sentiment"]
    assert preload_endpoint_model(Settings(), None).preload == ["*"]  # no model declared
    monkeypatch.setenv("FNB_PRELOAD", "a,b")
    assert preload_endpoint_model(Settings(), "sentiment").preload == ["a", "b"]


@pytest.mark.parametrize("endpoint", ["classify", "train_classifier"])
def test_worker_concurrency_comes_from_the_environment_first(endpoint, monkeypatch):
    monkeypatch.delenv("FNB_WORKER_CONCURRENCY", raising=False)
    baked = get_endpoint(endpoint).runpod.concurrency
    assert worker_concurrency(Settings(), endpoint) == baked
    monkeypatch.setenv("FNB_WORKER_CONCURRENCY", str(baked + 6))  # what deploy sets
    assert worker_concurrency(Settings(), endpoint) == baked + 6
    monkeypatch.setenv("FNB_WORKER_CONCURRENCY", "0")
    with pytest.raises(ValueError, match="worker_concurrency"):
        Settings()


def test_step_events_are_thinned_and_the_last_step_always_goes_out():
    from fnbundle.jobs.runpod_run import StepThinner

    now = [0.0]  # seconds on a clock the test moves
    thin: StepThinner[str] = StepThinner(every_s=1.0, clock=lambda: now[0])
    out: list[str] = []
    for step in range(1, 28):  # 27 steps, 1/8 s apart, an eval after step 12
        now[0] = step / 8
        out += thin("step", f"step {step}")
        if step == 12:
            out += thin("eval", "eval 1")
    out += thin.flush()
    # Step 1, then one a second (9, 17, 25); 12 before the eval; 27, the last, at the end.
    assert out == ["step 1", "step 9", "step 12", "eval 1", "step 17", "step 25", "step 27"]
    assert thin.flush() == []
