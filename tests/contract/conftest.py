"""Fixtures for the contract suite: one tiny trained store, seen by every runtime.

The store is the session's ``tiny_trained`` (tests/conftest.py). Runtimes that read their
settings from the environment (Modal's ``@modal.enter``, the RunPod worker) get it through
``FNB_*`` variables; the gateway gets the same :class:`Settings` object directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.settings import Settings

from tests.contract.cases import MODEL


@pytest.fixture
def store_env(tiny_trained, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``FNB_*`` pointing at the tiny store, preloading its model; returns those settings."""
    settings, _result = tiny_trained
    monkeypatch.setenv("FNB_STORE", str(settings.store_root))
    monkeypatch.setenv("FNB_DATA_ROOTS", ",".join(str(root) for root in settings.data_roots))
    monkeypatch.setenv("FNB_PRELOAD", MODEL)
    for name in ("FNB_API_KEYS", "FNB_MAX_TEXTS", "FNB_MAX_BODY_BYTES", "FNB_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return Settings()


@pytest.fixture
def gateway(store_env: Settings) -> Iterator[TestClient]:
    """The local gateway app over the tiny store (lifespan and preload included)."""
    with TestClient(create_app(store_env, jobs=False)) as client:
        yield client
