"""The model host: loads once, evicts the least recently used models past its memory bound,
heals a failed model once its file is fixed (or its name moves on), and reports readiness."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fnbundle.errors import ArtifactCorrupt
from fnbundle.runtime.host import ModelHost
from fnbundle.settings import MIB, Settings
from fnbundle.store import Artifact, Store
from fnbundle.tasks import REGISTRY

from tests.unit.tiny_onnx import publish_tiny

pytestmark = pytest.mark.unit

CLASSIFY = REGISTRY.serving_task("classify")


@pytest.fixture(autouse=True)
def cpu_without_amx(tmp_path, monkeypatch):
    """These tests follow one ONNX Runtime model through the host: on a CPU with AMX,
    ``auto`` would load it under the gated key ``auto`` (OpenVINO or ONNX Runtime)."""
    from fnbundle.runtime import openvino

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n", encoding="utf-8")
    monkeypatch.setattr(openvino, "CPUINFO", cpuinfo)


def footprint(artifact: Artifact) -> int:
    """Bytes the host counts for a tiny classifier: the files its backend reads."""
    files = artifact.manifest["files"]
    return sum(files[f]["size"] for f in CLASSIFY.files(artifact, "onnx-fp32"))


def host_for(store: Store, **overrides) -> ModelHost:
    return ModelHost(Settings(store=store.root, **overrides), store)


def test_a_model_loads_once_however_many_ask(tmp_path):
    store = Store(tmp_path)
    publish_tiny(store, "tiny")
    host = host_for(store)
    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(lambda _: host.load_sync(CLASSIFY, "tiny", "auto"), range(16)))
    assert all(m is models[0] for m in models)
    assert host.loaded() == [(models[0].model_id, "onnx-fp32")]


def test_past_the_memory_bound_the_least_recently_used_model_goes(tmp_path):
    store = Store(tmp_path)
    a, b, c = (publish_tiny(store, name) for name in ("a", "b", "c"))
    size = footprint(a)
    assert footprint(b) == footprint(c) == size
    host = host_for(store, model_cache_mib=2.5 * size / MIB)  # room for two models
    first_a = host.load_sync(CLASSIFY, "a", "auto")
    host.load_sync(CLASSIFY, "b", "auto")
    assert host.load_sync(CLASSIFY, "a", "auto") is first_a  # a is now the most recent
    host.load_sync(CLASSIFY, "c", "auto")
    assert [k[0] for k in host.loaded()] == [a.id, c.id]  # b, least recently used, went
    assert host.state((b.id, "onnx-fp32")) is None
    assert host.loaded_bytes() == 2 * size
    host.load_sync(CLASSIFY, "b", "auto")  # loads again, and a goes
    assert [k[0] for k in host.loaded()] == [c.id, b.id]


def test_one_model_larger_than_the_bound_still_serves(tmp_path):
    store = Store(tmp_path)
    publish_tiny(store, "big")
    host = host_for(store, model_cache_mib=1 / MIB)  # one byte
    model = host.load_sync(CLASSIFY, "big", "auto")
    assert host.load_sync(CLASSIFY, "big", "auto") is model


def test_a_request_holding_an_evicted_model_is_still_answered(tmp_path):
    store = Store(tmp_path)
    a = publish_tiny(store, "a")
    publish_tiny(store, "b")
    host = host_for(store, model_cache_mib=1.5 * footprint(a) / MIB)

    async def scenario() -> np.ndarray:
        _model, batch = await host.acquire(CLASSIFY, "a", "auto")
        assert batch is not None
        await batch.submit(["good film"])  # its worker is running
        await host.acquire(CLASSIFY, "b", "auto")  # evicts a, retiring its batcher
        assert host.state((a.id, "onnx-fp32")) is None and batch.retired
        rows = await batch.submit(["good film", "bad film"])
        await host.close()
        return rows

    rows = asyncio.run(scenario())
    assert rows.shape == (2, 2) and np.allclose(rows.sum(axis=1), 1)


def break_file(artifact: Artifact, rel: str) -> bytes:
    path = artifact.path / rel
    good = path.read_bytes()
    path.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])  # same size, wrong sha256
    return good


def test_a_failure_is_remembered_until_the_retry_interval(tmp_path):
    store = Store(tmp_path)
    tiny = publish_tiny(store, "tiny")
    good = break_file(tiny, "model.onnx")
    host = host_for(store, model_retry_s=3600)
    for _ in range(2):
        with pytest.raises(ArtifactCorrupt, match="sha256"):
            host.load_sync(CLASSIFY, "tiny", "auto")
    (tiny.path / "model.onnx").write_bytes(good)
    with pytest.raises(ArtifactCorrupt, match="sha256"):  # not retried yet
        host.load_sync(CLASSIFY, "tiny", "auto")
    assert host.state((tiny.id, "onnx-fp32")) == "failed"
    assert "sha256" in (host.reason((tiny.id, "onnx-fp32")) or "")


def test_a_failure_heals_once_the_file_is_fixed(tmp_path):
    store = Store(tmp_path)
    tiny = publish_tiny(store, "tiny")
    good = break_file(tiny, "model.onnx")
    host = host_for(store, model_retry_s=0)
    with pytest.raises(ArtifactCorrupt):
        host.load_sync(CLASSIFY, "tiny", "auto")
    (tiny.path / "model.onnx").write_bytes(good)
    model = host.load_sync(CLASSIFY, "tiny", "auto")
    assert model.predict(["good film"])[0]["label"] == "positive"
    assert host.state((tiny.id, "onnx-fp32")) == "ready"
    assert host.reason((tiny.id, "onnx-fp32")) is None


def test_a_name_whose_alias_moves_to_a_new_version_serves_it_at_once(tmp_path):
    store = Store(tmp_path)
    old = publish_tiny(store, "tiny")
    break_file(old, "model.onnx")
    host = host_for(store, model_retry_s=3600)
    with pytest.raises(ArtifactCorrupt):
        host.load_sync(CLASSIFY, "tiny", "auto")
    manifest = json.loads((old.path / "manifest.json").read_text())
    new = publish_tiny(store, "tiny")
    assert new.id != old.id and manifest["id"] == old.id
    assert host.load_sync(CLASSIFY, "tiny", "auto").model_id == new.id


def test_readiness_waits_for_the_preloads_and_names_each_outcome(tmp_path):
    store = Store(tmp_path)
    publish_tiny(store, "healthy")
    publish_tiny(store, "broken", onnx_bytes=b"not an ONNX model " * 8)
    host = host_for(store, preload=["healthy", "broken"])
    assert not host.readiness.ready and not host.readiness.done
    asyncio.run(host.preload_async())
    assert host.readiness.ready
    assert host.readiness.models["healthy"] == "ready"
    assert "model.onnx" in host.readiness.models["broken"]


def test_readiness_fails_when_no_preload_could_load(tmp_path):
    store = Store(tmp_path)
    publish_tiny(store, "broken", onnx_bytes=b"not an ONNX model " * 8)
    host = host_for(store, preload=["broken", "missing"])
    asyncio.run(host.preload_async())
    assert host.readiness.done and not host.readiness.ready
    assert "not found" in host.readiness.models["missing"]
