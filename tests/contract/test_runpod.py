"""The RunPod handlers against the gateway: called as functions and run as the SDK's
``--test_input`` worker. Every case's body, once its error string is decoded, must equal
the gateway's; the training handler streams typed events and never raises.

Only RunPod's cloud is faked (its progress-update call); the handlers, the SDK's local
job runner and the gateway are real.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fnbundle.endpoints import get_endpoint
from fnbundle.errors import FnbError
from fnbundle.jobs.runpod_run import STEP_EVENTS_EVERY_S
from fnbundle.settings import Settings
from fnbundle.store import Store

from tests.conftest import REPO
from tests.contract.cases import CASES, MODEL, Case, normalize
from tests.contract.conftest import write_small_reviews

pytestmark = pytest.mark.contract

HANDLERS = REPO / "handlers"
CASES_BY_NAME = {case.name: case for case in CASES}
WORKER_TIMEOUT_S = 180  # one --test_input run: import, load the model, one job, on 2 busy cores
HEAVY = ("torch", "transformers", "onnxruntime")


def _error_classes(cls: type[FnbError]) -> Iterator[type[FnbError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _error_classes(sub)


# What a RunPod caller reads instead of an HTTP status: the error type.
STATUS_OF_TYPE = {cls.type: cls.status for cls in _error_classes(FnbError)}
STATUS_OF_TYPE["internal_error"] = 500


def load_handler(name: str) -> ModuleType:
    """Import handlers/<name>.py as a module (handlers/ is a folder of scripts)."""
    spec = importlib.util.spec_from_file_location(f"runpod_handler_{name}", HANDLERS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode(output: dict[str, Any]) -> dict[str, Any]:
    """A job output as the gateway body: RunPod carries the error object as a JSON string."""
    if "error" in output:
        assert isinstance(output["error"], str), output
        return {"error": json.loads(output["error"])}
    return output


def worker_env() -> dict[str, str]:
    """A local worker's environment: the test's ``FNB_*``, none of RunPod's cloud variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def classify_worker(store_env) -> Iterator[tuple[ModuleType, asyncio.AbstractEventLoop]]:
    """The classify handler set up from ``FNB_*`` as in a worker, and the one event loop it
    runs in (as in a worker: its dynamic batcher belongs to one loop)."""
    module = load_handler("classify")
    service = module.setup()
    loop = asyncio.new_event_loop()
    try:
        yield module, loop
    finally:
        loop.run_until_complete(service.close())
        loop.close()


@pytest.mark.parametrize("name", ["classify", "train_classifier"])
def test_importing_a_handler_loads_nothing(name: str, store_env) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('h', {str(HANDLERS / f'{name}.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(json.dumps({'heavy': sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r}), 'has_handler': callable(module.handler), "
        "'set_up': getattr(module, '_service', None) is not None "
        "or getattr(module, '_settings', None) is not None}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=worker_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # No model can load without onnxruntime or torch: their absence proves nothing loaded.
    assert report == {"heavy": [], "has_handler": True, "set_up": False}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_handler_matches_gateway(case: Case, classify_worker, gateway) -> None:
    module, loop = classify_worker
    output = loop.run_until_complete(
        module.handler({"id": f"t-{case.name}", "input": case.payload})
    )
    answer = gateway.post("/v1/classify", json=case.payload)
    status, expected = answer.status_code, answer.json()
    body = decode(output)
    assert status == case.status
    assert normalize(body) == normalize(expected)
    if case.status == 200:
        assert body["model"].startswith(f"{MODEL}-")
        assert len(body["predictions"]) == len(case.payload["texts"])
    else:
        assert body["error"]["type"] == case.error_type
        assert body["error"].get("field") == case.field
        assert STATUS_OF_TYPE[body["error"]["type"]] == status


def test_classify_worker_preloads_its_endpoints_model_not_the_whole_store(
    store_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FNB_PRELOAD")  # as deployed: only the declaration names a model
    module = load_handler("classify")
    service = module.setup()
    assert service.preload_refs() == [get_endpoint("classify").model]  # not the store's MODEL
    monkeypatch.setenv("FNB_PRELOAD", MODEL)
    assert module.setup().preload_refs() == [MODEL]  # FNB_PRELOAD wins


def run_test_input(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run the classify worker the SDK's local way; return its exit code and job output."""
    done = subprocess.run(
        [
            sys.executable,
            str(HANDLERS / "classify.py"),
            "--test_input",
            json.dumps({"input": payload}),
        ],
        env=worker_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    # The SDK logs the outcome on stdout: a result as a Python literal, an error as is.
    for line in done.stdout.splitlines():
        if "| Job result: " in line:
            return done.returncode, ast.literal_eval(line.split("| Job result: ", 1)[1])["output"]
        if " failed with error: " in line:
            # The error string itself: the JSON of the error object.
            return done.returncode, {"error": line.split(" failed with error: ", 1)[1]}
    raise AssertionError(f"no job outcome in the worker's output:\n{done.stdout}\n{done.stderr}")


@pytest.mark.parametrize("name", ["good", "unknown_model"])
def test_test_input_worker_matches_gateway(name: str, store_env, gateway) -> None:
    payload = CASES_BY_NAME[name].payload
    returncode, output = run_test_input(payload)
    answer = gateway.post("/v1/classify", json=payload)
    status, expected = answer.status_code, answer.json()
    assert returncode == (0 if status == 200 else 1)  # the SDK exits 1 on a failed job
    assert normalize(decode(output)) == normalize(expected)


# --- training ---------------------------------------------------------------------------


@pytest.fixture
def train_settings(tmp_path: Path, tiny_base: Path) -> Settings:
    """An empty store and a small balanced dataset, both inside the allowed roots."""
    write_small_reviews(tmp_path / "small.csv")
    return Settings(store=tmp_path / "store", data_roots=[tmp_path, tiny_base.parent])


def run_training(module: ModuleType, payload: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in module.handler({"id": "train-1", "input": payload})]

    return asyncio.run(collect())


def test_train_handler_streams_progress_and_publishes(
    train_settings: Settings, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_handler("train_classifier")
    module.setup(train_settings)
    # RunPod's cloud is the one thing faked: the worker believes it runs there, and the
    # SDK call that would post each progress update to the job API records it instead.
    import runpod

    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setenv("RUNPOD_WEBHOOK_POST_OUTPUT", "http://127.0.0.1:9/unused")
    monkeypatch.setattr(
        runpod.serverless, "progress_update", lambda job, event: sent.append((job["id"], event))
    )
    payload = {
        "data": str(train_settings.data_roots[0] / "small.csv"),
        "name": "rp-tiny",
        "base": str(tiny_base),
        "epochs": 2,
        "batch_size": 2,  # a few dozen steps, to be thinned
        "learning_rate": 3e-3,
        "export_onnx": False,
    }
    started = time.monotonic()
    events = run_training(module, payload)
    elapsed_s = time.monotonic() - started

    types = [e.get("type") for e in events]
    assert types[0] == "start" and types[-1] == "result", types
    steps = [e for e in events if e.get("type") == "step"]
    total = events[0]["total_steps"]
    numbers = [e["step"] for e in steps]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1 and numbers[-1] == total
    for i, event in enumerate(events[1:], 1):  # each epoch's last step precedes its eval
        if event.get("type") == "eval":
            assert events[i - 1] == {**events[i - 1], "type": "step", "step": event["step"]}
    # Thinned: one step per STEP_EVENTS_EVERY_S, plus the last one before each other event.
    others = len(events) - len(steps)
    assert len(steps) <= 1 + others + elapsed_s / STEP_EVENTS_EVERY_S
    assert all(isinstance(e["loss"], float) and e["eta_s"] >= 0 for e in steps)
    evals = [e for e in events if e.get("type") == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]
    result = events[-1]
    assert [e["model_id"] for e in events if e.get("type") == "published"] == [result["model_id"]]
    assert Store(train_settings.store_root).resolve("rp-tiny").id == result["model_id"]
    assert result["name"] == "rp-tiny" and 0 <= result["metrics"]["accuracy"] <= 1
    # Progress reached RunPod: every eval, and step updates no faster than the rate limit.
    assert {job for job, _ in sent} == {"train-1"}
    assert [e for _, e in sent if e["type"] == "eval"] == evals
    step_updates = [e for _, e in sent if e["type"] == "step"]
    assert step_updates and step_updates[0] == steps[0]
    assert len(step_updates) <= 1 + elapsed_s / module.PROGRESS_EVERY_S


@pytest.mark.parametrize(
    ("payload", "error_type", "field"),
    [
        ({"name": "rp-tiny"}, "validation_error", "data"),
        ({"data": "/etc/passwd", "name": "rp-tiny"}, "invalid_request", "data"),
        ({"data": "../../etc/passwd", "name": "rp-tiny"}, "invalid_request", "data"),
        ({"data": "small.csv", "name": "Not A Name!"}, "validation_error", "name"),
        ({"data": "small.csv", "name": "rp-tiny", "epochs": 0}, "validation_error", "epochs"),
        (None, "validation_error", None),
    ],
    ids=["missing_data", "outside_roots", "dotdot", "bad_name", "zero_epochs", "no_input"],
)
def test_train_handler_bad_input_is_one_error(
    payload: Any, error_type: str, field: str | None, train_settings: Settings
) -> None:
    module = load_handler("train_classifier")
    module.setup(train_settings)
    events = run_training(module, payload)
    assert len(events) == 1, events
    error = decode(events[0])["error"]
    assert error["type"] == error_type
    assert error.get("field") == field
    assert not Store(train_settings.store_root).list()
