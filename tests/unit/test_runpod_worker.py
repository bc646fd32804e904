"""Settings and job outputs shared by the RunPod handlers."""

from __future__ import annotations

import json

import pytest
from fnbundle.errors import NotFound
from fnbundle.runpod_worker import job_output, worker_settings


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
