"""Fixtures for the contract suite: one tiny trained store, seen by every runtime.

The store is the session's ``tiny_trained`` (tests/conftest.py). Runtimes that read their
settings from the environment (Modal's ``@modal.enter``, the RunPod worker) get it through
``FNB_*`` variables; the gateway gets the same :class:`Settings` object directly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.settings import Settings

from tests.conftest import REVIEWS
from tests.contract.cases import MODEL

JOB_WAIT_S = 300  # seconds a tiny job may take on a busy 2-core machine


def write_small_reviews(path: Path) -> Path:
    """48 balanced reviews (24 per label) at ``path``: a few steps per epoch."""
    with REVIEWS.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    small = [r for r in rows if r["label"] == "positive"][:24]
    small += [r for r in rows if r["label"] == "negative"][:24]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([r["text"], r["label"]] for r in small)
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """The small reviews in ``<tmp>/data/small.csv``, a folder of their own."""
    return write_small_reviews(tmp_path / "data" / "small.csv")


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


def follow(
    client: TestClient, job_id: str, on_event: Callable[[dict], None] | None = None
) -> list[dict[str, Any]]:
    """The job's server-sent events (their JobEvent JSON), until the stream ends."""
    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=JOB_WAIT_S) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
                if on_event is not None:
                    on_event(events[-1])
    return events


def states(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["status"] for e in events if e["type"] == "state"]


def steps(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["step"] for e in events if e["type"] == "step"]
