import pytest
from fnbundle.settings import Settings

pytestmark = pytest.mark.unit


def test_env_lists_are_comma_separated(monkeypatch, tmp_path):
    monkeypatch.setenv("FNB_API_KEYS", "key-one, key-two")
    monkeypatch.setenv("FNB_DATA_ROOTS", f"{tmp_path},{tmp_path}/sub")
    monkeypatch.setenv("FNB_STORE", str(tmp_path / "store"))
    s = Settings()
    assert s.api_keys == ["key-one", "key-two"]
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
