import pytest
from fnbundle.settings import Settings

pytestmark = pytest.mark.unit


def test_env_lists_are_comma_separated(monkeypatch, tmp_path):
    monkeypatch.setenv("FNB_API_KEYS", "key-one-0123456789, key-two-0123456789")
    monkeypatch.setenv("FNB_DATA_ROOTS", f"{tmp_path},{tmp_path}/sub")
    monkeypatch.setenv("FNB_STORE", str(tmp_path / "store"))
    s = Settings()
    assert s.api_keys == ["key-one-0123456789", "key-two-0123456789"]
    assert s.data_roots == [tmp_path.resolve(), (tmp_path / "sub").resolve()]
    assert s.store_root == (tmp_path / "store").resolve()


def test_defaults_are_safe():
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.api_keys == []
    assert s.preload == ["*"]


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("FNB_PORT", "99999")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_runpod_jobs_need_a_key_and_keep_it_secret(monkeypatch):
    for name in ("RUNPOD_API_KEY", "FNB_RUNPOD_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FNB_JOBS_RUNPOD_ENDPOINT", "ep123")
    with pytest.raises(ValueError, match="set RUNPOD_API_KEY"):
        Settings()
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_secret")
    s = Settings()
    assert s.jobs_runpod_endpoint == "ep123"
    assert s.runpod_api_key.get_secret_value() == "rpa_secret"
    assert "rpa_secret" not in repr(s)
    monkeypatch.setenv("FNB_RUNPOD_API_KEY", "rpa_fnb")  # the prefixed name wins
    assert Settings().runpod_api_key.get_secret_value() == "rpa_fnb"


def test_runpod_jobs_take_one_endpoint_per_hardware_class(monkeypatch, tmp_path):
    from typing import get_args

    from fnbundle.jobs.backend import job_backend
    from fnbundle.settings import HARDWARE_CLASSES, runpod_endpoints
    from fnbundle.tasks.base import Hardware

    assert set(HARDWARE_CLASSES) == set(get_args(Hardware))
    assert runpod_endpoints("ep123") == "ep123"
    assert runpod_endpoints(" gpu = ep-gpu , cpu=ep-cpu ") == {"gpu": "ep-gpu", "cpu": "ep-cpu"}
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_secret")
    monkeypatch.setenv("FNB_JOBS_DIR", str(tmp_path))
    monkeypatch.setenv("FNB_JOBS_RUNPOD_ENDPOINT", "gpu=ep-gpu,cpu=ep-cpu,finetune_lora=ep-lora")
    jobs = job_backend(Settings())
    try:
        assert jobs.runpod.endpoints == {
            "gpu": "ep-gpu",
            "cpu": "ep-cpu",
            "finetune_lora": "ep-lora",
        }
        from types import SimpleNamespace

        def base(task: str, **params: str) -> str:
            return jobs.runpod.endpoint(SimpleNamespace(task=task, params=params)).base

        assert base("train_classifier").endswith("/ep-gpu")
        assert base("train_tabular", model="compare").endswith("/ep-cpu")
        # An MLP asked to train on CUDA is a GPU job, whatever its task's own class.
        assert base("train_tabular", model="mlp_classifier", device="cuda").endswith("/ep-gpu")
        # A task with its own endpoint goes there, not to its class's (LoRA: a 48 GB GPU
        # and QLoRA's packages), while the classifier keeps the class's.
        assert base("finetune_lora").endswith("/ep-lora")
    finally:
        jobs.stop()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("tpu=ep1", "'tpu=ep1' is not <class or task>=<endpoint id>"),
        ("gpu=", "'gpu=' is not <class or task>=<endpoint id>"),
        ("gpu=a,gpu=b", "gpu is given twice"),
        ("gpu=a,b", "'b' is not <class or task>=<endpoint id>"),
        ("classify=a", "'classify=a' is not <class or task>"),  # a serving task runs no jobs
    ],
)
def test_a_bad_endpoint_per_class_is_refused_naming_it(monkeypatch, value, words):
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_secret")
    monkeypatch.setenv("FNB_JOBS_RUNPOD_ENDPOINT", value)
    with pytest.raises(ValueError, match=words):
        Settings()


@pytest.mark.parametrize("keys", ['""', "short", "long-enough-key-0123,x"])
def test_short_api_keys_are_refused(monkeypatch, keys):
    monkeypatch.setenv("FNB_API_KEYS", keys)
    with pytest.raises(ValueError, match="shorter than 16 characters"):
        Settings()


def test_an_empty_key_list_means_no_keys(monkeypatch):
    monkeypatch.setenv("FNB_API_KEYS", "")
    assert Settings().api_keys == []


def test_server_limits_have_safe_defaults_and_read_the_environment(monkeypatch):
    s = Settings()
    assert s.max_header_bytes == 16 * 1024 and s.request_timeout_s == 15.0
    assert s.max_connections == 512 and s.shutdown_timeout_s == 20.0
    monkeypatch.setenv("FNB_MAX_HEADER_BYTES", "4096")
    monkeypatch.setenv("FNB_REQUEST_TIMEOUT_S", "0.5")
    assert (Settings().max_header_bytes, Settings().request_timeout_s) == (4096, 0.5)
    monkeypatch.setenv("FNB_REQUEST_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="request_timeout_s"):
        Settings()


@pytest.mark.parametrize(
    ("old_env", "new_env", "field", "value"),
    [
        ("FNB_MAX_TOKENS", "FNB_MAX_INPUT_TOKENS", "max_input_tokens", 64),
        ("FNB_BACKEND", "FNB_CLASSIFY_BACKEND", "classify_backend", "onnx-fp32"),
    ],
)
def test_renamed_settings_still_work_for_a_release_with_a_warning(
    monkeypatch, old_env, new_env, field, value
):
    monkeypatch.setenv(old_env, str(value))
    with pytest.warns(DeprecationWarning, match=f"{old_env} is deprecated: use {new_env}"):
        assert getattr(Settings(), field) == value
    old_kw = {"max_input_tokens": "max_tokens", "classify_backend": "backend"}[field]
    monkeypatch.delenv(old_env)
    with pytest.warns(DeprecationWarning, match=f"'{old_kw}' is deprecated"):
        assert getattr(Settings(**{old_kw: value}), field) == value
    monkeypatch.setenv(old_env, str(value))
    monkeypatch.setenv(new_env, "32" if field == "max_input_tokens" else "torch")
    with pytest.warns(DeprecationWarning):  # the new name wins
        assert getattr(Settings(), field) == (32 if field == "max_input_tokens" else "torch")


def test_the_new_names_give_no_warning(monkeypatch, recwarn):
    monkeypatch.setenv("FNB_MAX_INPUT_TOKENS", "64")
    monkeypatch.setenv("FNB_CLASSIFY_BACKEND", "onnx-int8")
    s = Settings()
    assert (s.max_input_tokens, s.classify_backend) == (64, "onnx-int8")
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
