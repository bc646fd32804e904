"""Every task in the registry has everything a runtime needs; the gateway serves them all.

A serving task needs its schemas, a Modal app (functions/<slug>.py), a RunPod handler
(handlers/<slug>.py), an entry in deploy/endpoints.toml and contract fixtures
(tests/contract/cases.py); a training task needs its params, estimate, train function,
hardware class and an endpoint. Adding a task without one of them fails here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.endpoints import load_endpoints
from fnbundle.errors import InvalidRequest
from fnbundle.settings import Settings
from fnbundle.tasks import REGISTRY
from fnbundle.tasks.base import ServingTask, TrainingTask
from pydantic import BaseModel

from tests.conftest import REPO
from tests.contract import cases

pytestmark = pytest.mark.unit

# Tasks whose runtimes are still being written: each entry must fail below until they land
# (strict), then be removed from here.
PENDING_RUNTIMES: dict[str, str] = {}


def serving_params() -> list[object]:
    return [
        pytest.param(
            slug,
            marks=[pytest.mark.xfail(strict=True, reason=PENDING_RUNTIMES[slug])]
            if slug in PENDING_RUNTIMES
            else [],
        )
        for slug in sorted(REGISTRY.serving)
    ]


def contract_fixtures() -> dict[str, list[cases.Case]]:
    """The contract cases per serving task (the classifier's predate the per-task table)."""
    return getattr(cases, "CASES_BY_TASK", {"classify": cases.CASES})


def endpoint_tasks() -> set[str]:
    return {e.task for e in load_endpoints().values()}


def test_the_registry_lists_the_serving_tasks():
    assert {"classify", "embed"} <= set(REGISTRY.serving)
    for slug, task in REGISTRY.serving.items():
        assert isinstance(task, ServingTask) and task.slug == slug


@pytest.mark.parametrize("slug", sorted(REGISTRY.serving))
def test_a_serving_task_declares_its_schemas_route_and_example(slug):
    task = REGISTRY.serving_task(slug)
    assert issubclass(task.request_model, BaseModel)
    assert issubclass(task.response_model, BaseModel)
    assert task.route.startswith("/v1/") and task.summary and task.noun
    assert task.error_style in {"fnbundle", "openai"}
    task.request_model.model_validate(task.example)  # the example is a valid request


@pytest.mark.parametrize("slug", serving_params())
def test_a_serving_task_has_its_runtimes_endpoint_and_contract_fixtures(slug):
    assert (REPO / "functions" / f"{slug}.py").is_file(), f"functions/{slug}.py is missing"
    assert (REPO / "handlers" / f"{slug}.py").is_file(), f"handlers/{slug}.py is missing"
    assert slug in endpoint_tasks(), f"deploy/endpoints.toml has no endpoint for {slug}"
    assert contract_fixtures().get(slug), f"tests/contract/cases.py has no {slug} cases"


@pytest.mark.parametrize("slug", sorted(REGISTRY.training))
def test_a_training_task_has_params_estimate_train_hardware_and_an_endpoint(slug):
    task = REGISTRY.training_task(slug)
    assert isinstance(task, TrainingTask)
    assert issubclass(task.params_model, BaseModel)
    assert task.hardware in {"cpu", "gpu"}
    assert task.serves in REGISTRY.serving, f"{slug} serves an unknown task {task.serves!r}"
    for method in ("estimate", "train"):
        assert not getattr(getattr(task, method), "__isabstractmethod__", False), method
        assert callable(getattr(task, method))
    assert slug in endpoint_tasks(), f"deploy/endpoints.toml has no endpoint for {slug}"
    assert (REPO / "functions" / f"{slug}.py").is_file(), f"functions/{slug}.py is missing"
    assert (REPO / "handlers" / f"{slug}.py").is_file(), f"handlers/{slug}.py is missing"


def test_unknown_slugs_are_clear_errors():
    with pytest.raises(InvalidRequest, match="known: classify, embed"):
        REGISTRY.serving_task("translate")
    with pytest.raises(ValueError, match="declared twice"):
        REGISTRY.add(REGISTRY.serving_task("classify"))


def test_the_gateway_has_one_route_per_serving_task_with_its_schemas(tmp_path):
    with TestClient(create_app(Settings(store=tmp_path), jobs=False)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for task in REGISTRY.serving.values():
        operation = paths[task.route]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(f"/{task.request_model.__name__}")
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith(f"/{task.response_model.__name__}")
        error = operation["responses"]["404"]["content"]["application/json"]["schema"]
        assert ("OpenAIErrorBody" in str(error)) == (task.error_style == "openai")


def test_importing_the_registry_and_the_gateway_imports_no_inference_library():
    code = (
        "import sys, fnbundle.tasks, fnbundle.api; "
        "print([m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_endpoint_for_a_task_the_registry_lacks_is_refused(tmp_path):
    from tests.unit.test_endpoints import accepted, refused

    message = refused(tmp_path, task="translate")
    assert "unknown task 'translate'" in message and "classify, embed" in message
    assert accepted(tmp_path, task="embed").task == "embed"
