"""deploy/plan.py through the command line's --dry-run: every declared setting in the plan,
the checks that refuse a plan (exit 2, nothing printed), the Modal auth each curl line carries,
and every declared key reaching what the platform is told."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fnbundle.endpoints import RunPodSpec, load_endpoints

from deploy import deploy
from deploy.plan import Options, build_plan
from tests.unit.deploy_support import (
    CLASSIFY_IMAGE,
    DECLARATION,
    MODAL_TOKEN,
    REPO,
    SECRET,
    FakeShell,
    auth_headers,
    broken,
    dry_run,
    make_root,
    run_script,
)

pytestmark = pytest.mark.unit


# --- the dry-run plan -----------------------------------------------------------------------------
def test_dry_run_modal_plans_every_endpoint_scaled_to_zero(tmp_path):
    root = make_root(tmp_path)
    plan = dry_run(root, "modal")
    declared = load_endpoints(root / "deploy" / "endpoints.toml")
    assert plan["target"] == "modal" and set(plan["endpoints"]) == set(declared)
    for name, endpoint in declared.items():
        entry, spec = plan["endpoints"][name], endpoint.modal
        assert entry["scaling"]["min"] == 0
        assert entry["scaling"]["scaledown_window_s"] == spec.scaledown_window_s
        assert entry["scaling"]["max"] == spec.max_containers
        assert entry["scaling"]["concurrency"] == spec.max_inputs
        assert entry["scaling"]["gpu"] == spec.gpu
        assert entry["settings"]["scaledown_window_s"] == spec.scaledown_window_s
        assert entry["steps"] == [{"run": ["modal", "deploy", "--tag", "t1", spec.file]}]
    assert "/v1/classify" in plan["endpoints"]["classify"]["curl"]
    assert plan["endpoints"]["train_classifier"]["invoke"].startswith(
        "modal run --detach functions/train_classifier.py --data "
    )


def test_dry_run_runpod_plans_builds_and_mutations_scaled_to_zero(tmp_path):
    root = make_root(tmp_path)
    plan = dry_run(root, "runpod", "--registry", "docker.io/me")
    declared = load_endpoints(root / "deploy" / "endpoints.toml")
    assert set(plan["endpoints"]) == set(declared)
    for name, endpoint in declared.items():
        entry, spec = plan["endpoints"][name], endpoint.runpod
        image = f"docker.io/me/{spec.image}:t1"
        build, push, template, saved = entry["steps"]
        assert build["run"][:2] == ["docker", "build"] and image in build["run"]
        assert f"HANDLER={Path(spec.handler).stem}" in build["run"]
        # A CPU worker's image gets torch's CPU build (a GPU one the Dockerfile's CUDA one).
        cpu_torch = "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in build["run"]
        assert cpu_torch == (spec.compute == "CPU"), name
        assert push == {"run": ["docker", "push", image]}
        assert template["api"] == "saveTemplate" and template["input"]["imageName"] == image
        assert template["input"]["isServerless"] is True
        fields = saved["input"]
        assert saved["api"] == "saveEndpoint"
        assert fields["workersMin"] == 0 == entry["scaling"]["min"]
        assert fields["workersMax"] == spec.workers_max == entry["scaling"]["max"]
        assert (
            fields["idleTimeout"] == spec.idle_timeout_s == entry["scaling"]["scaledown_window_s"]
        )
        assert fields["executionTimeoutMs"] == spec.execution_timeout_s * 1000
        assert fields["flashBootType"] == ("FLASHBOOT" if spec.flashboot else "OFF")
        assert (
            fields["scalerType"] == spec.scaler_type and fields["scalerValue"] == spec.scaler_value
        )
        assert entry["scaling"]["concurrency"] == spec.concurrency
        if spec.compute == "GPU":
            assert fields["gpuIds"] == ",".join(spec.gpu_ids) == ",".join(entry["scaling"]["gpu"])
        else:
            assert fields["instanceIds"] == spec.cpu_flavor_ids == entry["scaling"]["cpu"]
        assert entry["url"].startswith("https://api.runpod.ai/v2/<endpoint-id>/")
        assert entry["curl"].startswith(f"curl -s {entry['url']} ")
    assert plan["endpoints"]["classify"]["url"].endswith("/runsync")


def test_shipped_declaration_dry_runs_on_both_platforms(tmp_path):
    for target in ("modal", "runpod"):
        env = SECRET if target == "modal" else {}
        done = run_script("--target", target, "--dry-run", home=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert set(json.loads(done.stdout)["endpoints"]) == set(load_endpoints(DECLARATION))


def test_only_selects_endpoints_repeated_or_comma_separated(tmp_path):
    root = make_root(tmp_path)
    assert list(dry_run(root, "modal", "--only", "classify")["endpoints"]) == ["classify"]
    both = dry_run(root, "runpod", "--only", "train_classifier,classify")
    assert list(both["endpoints"]) == ["train_classifier", "classify"]
    again = dry_run(root, "runpod", "--only", "classify", "--only", "classify")
    assert list(again["endpoints"]) == ["classify"]


def test_dry_run_says_how_each_image_is_known(tmp_path):
    plan = dry_run(make_root(tmp_path), "runpod", "--registry", "docker.io/me")
    entry = plan["endpoints"]["classify"]
    assert entry["image_source"] == "build"
    assert entry["image_check"] == f"HEAD {CLASSIFY_IMAGE}"
    assert "Docker engine" in plan["images"] and "exit 2" in plan["images"]
    vouched = dry_run(make_root(tmp_path / "b"), "runpod", "--image-exists")
    assert all(e["image_check"] is None for e in vouched["endpoints"].values())
    assert all(len(e["steps"]) == 2 for e in vouched["endpoints"].values())  # API steps only


# --- checks that refuse a plan --------------------------------------------------------------------
def test_unknown_endpoint_exits_2_naming_it(tmp_path):
    root = make_root(tmp_path)
    done = run_script(
        "--target", "modal", "--dry-run", "--root", str(root), "--only", "summarize", home=root
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "summarize" in done.stderr and "classify" in done.stderr


@pytest.mark.parametrize(
    ("target", "old", "new", "named"),
    [
        ("modal", 'gpu = "L4"', 'gpu = "X100"', "X100"),
        ("runpod", '["AMPERE_24", "ADA_24"]', '["AMPERE_24", "RTX_4090"]', "RTX_4090"),
        ("modal", "scaledown_window_s = 300", "scaledown_window_s = 7200", "scaledown_window_s"),
        ("runpod", "idle_timeout_s = 60", "idle_timeout_s = 7200", "idle_timeout_s"),
    ],
)
def test_invalid_gpu_or_window_exits_2_before_any_plan(tmp_path, target, old, new, named):
    root = make_root(tmp_path, broken(old, new))
    done = run_script("--target", target, "--dry-run", "--root", str(root), home=root)
    assert done.returncode == 2 and done.stdout == ""
    assert named in done.stderr and "Traceback" not in done.stderr


def test_warm_workers_need_allow_warm(tmp_path):
    root = make_root(
        tmp_path, broken("workers_min = 0             # scale to zero", "workers_min = 1")
    )
    refused = run_script("--target", "runpod", "--dry-run", "--root", str(root), home=root)
    assert refused.returncode == 2 and "--allow-warm" in refused.stderr
    entry = dry_run(root, "runpod", "--allow-warm")["endpoints"]["classify"]
    assert entry["scaling"]["min"] == 1
    assert entry["steps"][-1]["input"]["workersMin"] == 1  # what RunPod is told


def test_missing_entry_file_exits_2(tmp_path):
    root = make_root(tmp_path)
    (root / "handlers" / "classify.py").unlink()
    done = run_script("--target", "runpod", "--dry-run", "--root", str(root), home=root)
    assert done.returncode == 2 and "handlers/classify.py" in done.stderr
    assert dry_run(root, "modal")["endpoints"]  # Modal does not need the handler


# --- Modal: no web endpoint answers anyone unless --public says so --------------------------------
def test_modal_without_auth_is_refused_before_anything_runs(tmp_path, capsys):
    root, shell = make_root(tmp_path), FakeShell()
    environ = {"HOME": str(tmp_path), **MODAL_TOKEN}
    assert (
        deploy.main(["--target", "modal", "--root", str(root)], shell=shell, environ=environ) == 2
    )
    assert shell.calls == []
    message = capsys.readouterr().err
    for hint in (
        "FNB_MODAL_SECRET",
        "FNB_MODAL_PROXY_AUTH",
        "--public",
        "fnbundle-train-classifier",
    ):
        assert hint in message
    refused = run_script("--target", "modal", "--dry-run", "--root", str(root), home=root, env={})
    assert refused.returncode == 2 and refused.stdout == ""


def test_modal_public_deploys_with_curl_lines_without_auth(tmp_path):
    plan = dry_run(make_root(tmp_path), "modal", "--public", env={})
    assert plan["auth"] == {"bearer_secret": None, "proxy_auth": False, "public": True}
    for entry in plan["endpoints"].values():
        assert auth_headers(entry["curl"]) == []


def test_modal_secret_curl_lines_send_the_bearer_key(tmp_path):
    plan = dry_run(make_root(tmp_path), "modal")
    assert plan["auth"]["bearer_secret"] == "fnbundle-api-keys"
    classify, train = plan["endpoints"]["classify"], plan["endpoints"]["train_classifier"]
    assert auth_headers(classify["curl"]) == ["Authorization: Bearer $FNB_API_KEY"]
    # The training app's web endpoint is the job API: its curl submits a job.
    assert "/v1/jobs" in train["curl"] and '"task": "train_classifier"' in train["curl"]
    assert auth_headers(train["curl"]) == ["Authorization: Bearer $FNB_API_KEY"]


def test_modal_proxy_auth_curl_lines_send_the_proxy_token(tmp_path):
    plan = dry_run(make_root(tmp_path), "modal", env={"FNB_MODAL_PROXY_AUTH": "1"})
    assert plan["auth"] == {"bearer_secret": None, "proxy_auth": True, "public": False}
    for entry in plan["endpoints"].values():
        assert auth_headers(entry["curl"]) == [
            "Modal-Key: $MODAL_PROXY_TOKEN_ID",
            "Modal-Secret: $MODAL_PROXY_TOKEN_SECRET",
        ]
    both = dry_run(
        make_root(tmp_path / "b"), "modal", env={**SECRET, "FNB_MODAL_PROXY_AUTH": "true"}
    )
    assert len(auth_headers(both["endpoints"]["classify"]["curl"])) == 3


# --- every declared setting reaches the platform --------------------------------------------------
def test_web_timeout_is_in_the_modal_plan(tmp_path):
    plan = dry_run(make_root(tmp_path), "modal")
    declared = load_endpoints(DECLARATION)
    assert plan["endpoints"]["train_classifier"]["web_timeout_s"] == 3600
    classify = plan["endpoints"]["classify"]
    assert classify["web_timeout_s"] == declared["classify"].modal.timeout_s


def test_worker_runtime_settings_go_into_the_template_environment(tmp_path):
    plan = dry_run(make_root(tmp_path), "runpod")
    env = {
        name: {item["key"]: item["value"] for item in entry["steps"][-2]["input"]["env"]}
        for name, entry in plan["endpoints"].items()
    }
    assert env["classify"] == {"FNB_WORKER_CONCURRENCY": "8", "FNB_PRELOAD": "sentiment"}
    assert env["train_classifier"] == {"FNB_WORKER_CONCURRENCY": "1"}


# One other valid value per RunPodSpec key (several keys where one cannot change alone).
RUNPOD_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "handler": {"train_classifier": {"handler": "handlers/classify.py"}},
    "image": {"train_classifier": {"image": "other-image"}},
    "compute": {
        "train_classifier": {
            "compute": "CPU",
            "gpu_ids": [],
            "cuda_versions": [],
            "cpu_flavor_ids": ["cpu3c-2-4"],
        }
    },
    "gpu_ids": {"train_classifier": {"gpu_ids": ["HOPPER_141"]}},
    "cpu_flavor_ids": {"classify": {"cpu_flavor_ids": ["cpu5c-4-8"]}},
    "workers_min": {"train_classifier": {"workers_min": 1}},
    "workers_max": {"train_classifier": {"workers_max": 7}},
    "idle_timeout_s": {"train_classifier": {"idle_timeout_s": 77}},
    "execution_timeout_s": {"train_classifier": {"execution_timeout_s": 777}},
    "flashboot": {"train_classifier": {"flashboot": False}},
    "scaler_type": {"train_classifier": {"scaler_type": "REQUEST_COUNT"}},
    "scaler_value": {"train_classifier": {"scaler_value": 9}},
    "concurrency": {"classify": {"concurrency": 3}},
    "container_disk_gb": {"train_classifier": {"container_disk_gb": 42}},
    "cuda_versions": {"train_classifier": {"cuda_versions": ["12.4"]}},
    "env": {"train_classifier": {"env": {"FNB_LOG_LEVEL": "debug"}}},
}


def _what_runpod_is_told(root: Path) -> dict[str, Any]:
    """Per endpoint: the commands and API inputs of the plan (what a deploy changes)."""
    config = root / "deploy" / "endpoints.toml"
    options = Options(target="runpod", tag="t1", root=root, config=config)
    plan = build_plan("runpod", list(load_endpoints(config).values()), options)
    return {name: entry["steps"] for name, entry in plan["endpoints"].items()}


def test_every_runpod_key_changes_what_runpod_is_told(tmp_path):
    """A key that changes no command and no API input would pass --dry-run and do nothing."""
    missing = set(RunPodSpec.model_fields) - set(RUNPOD_VARIANTS)
    assert not missing, f"give {sorted(missing)} a variant here, and apply it in deploy.py"
    base_text = DECLARATION.read_text()
    base = _what_runpod_is_told(make_root(tmp_path / "base", base_text))
    tables = tomllib.loads(base_text)["endpoints"]
    for key, change in RUNPOD_VARIANTS.items():
        lines = [base_text]
        for name, values in change.items():
            merged = {**tables[name]["runpod"], **values}
            tables_text = "\n".join(f"{k} = {_toml(v)}" for k, v in merged.items())
            old = base_text.split(f"[endpoints.{name}.runpod]\n", 1)[1].split("\n[", 1)[0]
            lines[0] = lines[0].replace(old, tables_text + "\n")
        told = _what_runpod_is_told(make_root(tmp_path / key, lines[0]))
        changed = [name for name in change if told[name] != base[name]]
        assert changed == list(change), f"runpod.{key} changes nothing RunPod is told"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


# Declaration key -> the Modal argument that applies it (in @app.function, @app.cls or
# @modal.concurrent). web_timeout_s is the timeout of a training app's web class.
MODAL_ARGUMENTS = {
    "gpu": "gpu",
    "cpu": "cpu",
    "memory_mib": "memory",
    "min_containers": "min_containers",
    "max_containers": "max_containers",
    "buffer_containers": "buffer_containers",
    "scaledown_window_s": "scaledown_window",
    "timeout_s": "timeout",
    "retries": "retries",
    "enable_memory_snapshot": "enable_memory_snapshot",
    "max_inputs": "max_inputs",
    "target_inputs": "target_inputs",
    "web_timeout_s": "timeout",
}


def modal_arguments(app_file: str, monkeypatch) -> dict[str, list[Any]]:
    """Every keyword the app passes to Modal's decorators, recorded while it imports (Modal's
    own decorators still run: an import touches no network)."""
    import modal

    seen: dict[str, list[Any]] = {}

    def recording(original):
        def record(*args, **kwargs):
            for key, value in kwargs.items():
                seen.setdefault(key, []).append(value)
            return original(*args, **kwargs)

        return record

    monkeypatch.setattr(modal.App, "function", recording(modal.App.function))
    monkeypatch.setattr(modal.App, "cls", recording(modal.App.cls))
    monkeypatch.setattr(modal, "concurrent", recording(modal.concurrent))
    monkeypatch.syspath_prepend(str(REPO))  # the apps import functions.images
    spec = importlib.util.spec_from_file_location(
        f"recorded_{Path(app_file).stem}", REPO / app_file
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen["app"] = [module.app.name]
    return seen


@pytest.mark.parametrize("name", sorted(load_endpoints(DECLARATION)))
def test_every_declared_modal_key_reaches_the_apps_decorators(name, monkeypatch):
    """A declared key the app does not pass to Modal must be refused by the declaration."""
    endpoint = load_endpoints(DECLARATION)[name]
    seen = modal_arguments(endpoint.modal.file, monkeypatch)
    assert seen["app"] == [endpoint.modal.app]
    declared = endpoint.modal.model_fields_set - {"app", "file"}
    assert declared <= set(MODAL_ARGUMENTS), "map the new key to the Modal argument applying it"
    unapplied = [
        key
        for key in sorted(declared)
        if getattr(endpoint.modal, key) not in seen.get(MODAL_ARGUMENTS[key], [])
    ]
    assert not unapplied, f"{endpoint.modal.file} does not apply modal.{', '.join(unapplied)}"
