"""Every task in the registry has everything a runtime needs; the gateway serves them all.

A serving task needs its schemas, a Modal app (functions/<slug>.py), a RunPod worker
(handlers/<slug>.py) with its image's lock (requirements/runpod-<slug>.txt), an entry in
deploy/endpoints.toml and contract fixtures (tests/contract/cases.py); a training task needs
its params, estimate, train function, hardware class, both entry files and an endpoint. Adding
a task without one of them fails here, naming the file to add; and every Modal app must import
in a container as Modal builds it (the entry file alone, next to what functions/images.py
ships), not only from the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.endpoints import Endpoint, get_endpoint, load_endpoints
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


def missing_pieces(
    slug: str,
    *,
    serving: bool,
    repo: Path = REPO,
    endpoints: Mapping[str, Endpoint] | None = None,
    fixtures: Mapping[str, Sequence[cases.Case]] | None = None,
) -> list[str]:
    """What task ``slug`` still lacks on some runtime, one line per piece, each naming the
    file to add (README.md, "Adding a task")."""
    if endpoints is None:
        endpoints = load_endpoints()
    declared = [e for e in endpoints.values() if e.task == slug]
    files = {  # the file -> why a runtime needs it; the first reason is kept
        f"functions/{slug}.py": "the task's Modal app",
        f"handlers/{slug}.py": "the task's RunPod worker",
    }
    for endpoint in declared:
        where = f"deploy/endpoints.toml [endpoints.{endpoint.name}]"
        files.setdefault(endpoint.modal.file, f"{where} names it as modal.file")
        files.setdefault(endpoint.runpod.handler, f"{where} names it as runpod.handler")
        # handlers/Dockerfile installs a worker's packages from requirements/runpod-<stem>.txt.
        lock = f"requirements/runpod-{Path(endpoint.runpod.handler).stem}.txt"
        files.setdefault(lock, "the RunPod worker image's lock: a line in the Makefile's lock")
    missing = [f"add {path}: {why}" for path, why in files.items() if not (repo / path).is_file()]
    if not declared:
        missing.append(f'add [endpoints.{slug}] with task = "{slug}" to deploy/endpoints.toml')
    if serving and not (contract_fixtures() if fixtures is None else fixtures).get(slug):
        missing.append(f"add {slug!r} cases to CASES_BY_TASK in tests/contract/cases.py")
    return missing


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
    missing = missing_pieces(slug, serving=True)
    assert not missing, f"the {slug} task is incomplete:\n" + "\n".join(missing)


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
    missing = missing_pieces(slug, serving=False)
    assert not missing, f"the {slug} task is incomplete:\n" + "\n".join(missing)


def test_a_task_with_only_its_folder_is_told_every_file_to_add(tmp_path):
    """A task registered but with nothing else: each piece is named (an empty repository)."""
    assert missing_pieces("embed", serving=True, repo=tmp_path, endpoints={}, fixtures={}) == [
        "add functions/embed.py: the task's Modal app",
        "add handlers/embed.py: the task's RunPod worker",
        'add [endpoints.embed] with task = "embed" to deploy/endpoints.toml',
        "add 'embed' cases to CASES_BY_TASK in tests/contract/cases.py",
    ]
    assert missing_pieces("train_classifier", serving=False, repo=tmp_path, endpoints={}) == [
        "add functions/train_classifier.py: the task's Modal app",
        "add handlers/train_classifier.py: the task's RunPod worker",
        'add [endpoints.train_classifier] with task = "train_classifier" to deploy/endpoints.toml',
    ]


def test_the_files_an_endpoint_names_must_exist(tmp_path):
    """An endpoint that names another app or worker file, and a worker without its lock."""
    shipped = get_endpoint("embed")
    endpoint = shipped.model_copy(
        update={
            "name": "vectors",
            "modal": shipped.modal.model_copy(update={"file": "functions/vectors.py"}),
            "runpod": shipped.runpod.model_copy(update={"handler": "handlers/vectors.py"}),
        }
    )
    for path in ("functions/embed.py", "handlers/embed.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    missing = missing_pieces("embed", serving=True, repo=tmp_path, endpoints={"vectors": endpoint})
    where = "deploy/endpoints.toml [endpoints.vectors]"
    assert missing == [
        f"add functions/vectors.py: {where} names it as modal.file",
        f"add handlers/vectors.py: {where} names it as runpod.handler",
        "add requirements/runpod-vectors.txt: the RunPod worker image's lock: a line in the "
        "Makefile's lock",
    ]


# --- a Modal app imports in its container --------------------------------------------------
# `modal deploy functions/<app>.py` mounts that file alone, as /root/<app>.py; everything else
# it imports must be in the image, which functions/images.py builds with add_local_*.
IMAGE_FILES_SPY = """
import json
import modal

added = []


def spy(name):
    original = getattr(modal.Image, name)

    def record(self, *args, **kwargs):
        added.append({"call": name, "args": [str(a) for a in args], "kwargs": kwargs})
        return original(self, *args, **kwargs)

    setattr(modal.Image, name, record)


for name in ("add_local_file", "add_local_dir", "add_local_python_source"):
    spy(name)
import functions.images

print(json.dumps(added, default=str))
"""

IMPORT_APPS = """
import importlib, json, sys
seen = {}
for name in sys.argv[1:]:
    try:
        app = getattr(importlib.import_module(name), "app", None)
        seen[name] = {"app": type(app).__name__, "name": getattr(app, "name", None)}
    except Exception as exc:
        seen[name] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(seen))
"""


FIND_MODULES = (
    "import importlib.util, json, sys; "
    "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
)


def offline_env() -> dict[str, str]:
    """No Modal credentials, a Modal server nobody answers at, no path into the repository."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODAL_", "FNB_MODAL_")) and k != "PYTHONPATH"
    }
    env["MODAL_CONFIG_PATH"] = os.devnull  # no profile, no token
    env["MODAL_SERVER_URL"] = "http://127.0.0.1:9"  # any call to Modal would fail here
    return env


def copy_python_source(module: str, root: Path) -> None:
    """``add_local_python_source(module)``: its .py files under /root/<module>."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"functions/images.py adds {module!r}, which does not import"
    if spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            for source in Path(location).rglob("*.py"):
                target = root / module / source.relative_to(location)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    else:
        assert spec.origin is not None
        shutil.copy(spec.origin, root / f"{module}.py")


def installed(modules: Sequence[str], cwd: Path) -> set[str]:
    """Of ``modules``, those this virtualenv (standing for the image's packages) imports
    without the repository on the path."""
    found = subprocess.run(
        [sys.executable, "-c", FIND_MODULES, *modules],
        cwd=cwd,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(found.stdout))


def build_container_root(root: Path) -> None:
    """What every Modal container of this project holds under /root, from functions/images.py."""
    spied = subprocess.run(
        [sys.executable, "-c", IMAGE_FILES_SPY],
        cwd=REPO,
        env={**offline_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for added in json.loads(spied.stdout.strip().splitlines()[-1]):
        args, kwargs = added["args"], added["kwargs"]
        if added["call"] == "add_local_python_source":
            for module in args:
                if module not in installed(args, root):  # fnbundle is: the same source
                    copy_python_source(module, root)
            continue
        local = Path(args[0] if args else kwargs["local_path"])
        remote = Path(args[1] if len(args) > 1 else kwargs["remote_path"])
        if not remote.is_relative_to("/root"):
            continue  # outside the import path
        target = root / remote.relative_to("/root")
        if added["call"] == "add_local_file":
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local, target)
        else:
            ignore = kwargs.get("ignore") or []
            shutil.copytree(
                local, target, ignore=shutil.ignore_patterns(*ignore), dirs_exist_ok=True
            )


@pytest.fixture(scope="module")
def modal_containers(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Each app of deploy/endpoints.toml imported as Modal's container imports it."""
    root = tmp_path_factory.mktemp("container") / "root"
    root.mkdir()
    build_container_root(root)
    apps = sorted({e.modal.file for e in load_endpoints().values()})
    for app in apps:
        shutil.copy(REPO / app, root / Path(app).name)  # the entry file, mounted by Modal
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_APPS, *(Path(app).stem for app in apps)],
        cwd=root,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(load_endpoints()))
def test_a_modal_app_imports_in_its_container(name, modal_containers):
    """`modal deploy` would find the app, by the name the endpoint declares."""
    endpoint = get_endpoint(name)
    seen = modal_containers[Path(endpoint.modal.file).stem]
    assert "error" not in seen, (
        f"{endpoint.modal.file} does not import in a Modal container: {seen['error']}; a module "
        "it imports must be in fnbundle or added to the image in functions/images.py"
    )
    assert seen == {"app": "App", "name": endpoint.modal.app}


def test_the_modal_containers_carry_the_playground_page(tmp_path):
    """add_local_python_source ships .py files only: the page's files must be added apart."""
    from fnbundle.playground import STATIC_DIR

    root = tmp_path / "root"
    root.mkdir()
    copy_python_source("fnbundle", root)  # what Modal ships of the package by itself
    build_container_root(root)
    shipped = root / "fnbundle" / "playground" / "static"
    missing = [p.name for p in STATIC_DIR.iterdir() if not (shipped / p.name).is_file()]
    assert not missing, f"the Modal image lacks the playground's {missing}"


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
