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
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fnbundle.endpoints import get_endpoint
from fnbundle.errors import FnbError
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
        "'set_up': getattr(getattr(module, 'worker', None), 'host', None) is not None "
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


def run_test_input(
    payload: dict[str, Any], handler: str = "classify", env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Run ``handlers/<handler>.py`` the SDK's local way (``--test_input``); return its exit
    code and job output."""
    done = subprocess.run(
        [
            sys.executable,
            str(HANDLERS / f"{handler}.py"),
            "--test_input",
            json.dumps({"input": payload}),
        ],
        env=worker_env() if env is None else env,
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


@pytest.mark.parametrize(
    "payload",
    [
        {"data": "small.csv", "name": "rp-tiny", "epochs": 1},  # training params, not a job
        {"job_id": "job-20260101000000-00000000"},
        None,
    ],
    ids=["raw_params", "no_job", "no_input"],
)
def test_the_training_worker_takes_jobs_only(payload: Any, train_settings: Settings) -> None:
    # Everything is a job: a second way to train, beside POST /v1/jobs, would skip its
    # estimate, budget, idempotency and events.
    module = load_handler("train_classifier")
    module.setup(train_settings)
    events = run_training(module, payload)
    assert len(events) == 1, events
    error = decode(events[0])["error"]
    assert error["type"] == "invalid_request" and error["field"] == "input"
    assert "POST /v1/jobs" in error["message"]
    assert not Store(train_settings.store_root).list()
