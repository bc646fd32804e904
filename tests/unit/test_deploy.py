"""deploy/deploy.py: the dry-run plan, the checks that refuse to publish, and execution
against fakes of the two boundaries it cannot reach here (local commands, RunPod's API)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fnbundle.endpoints import load_endpoints

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "deploy.py"
DECLARATION = REPO / "deploy" / "endpoints.toml"


def _load_script():
    spec = importlib.util.spec_from_file_location("fnbundle_deploy_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


deploy = _load_script()


# --- fixtures: a repository root holding a declaration and the files it names ------------------
def make_root(tmp_path: Path, declaration: str | None = None) -> Path:
    """A root with ``deploy/endpoints.toml`` and stub entry files for every endpoint."""
    root = tmp_path / "repo"
    (root / "deploy").mkdir(parents=True)
    text = DECLARATION.read_text() if declaration is None else declaration
    (root / "deploy" / "endpoints.toml").write_text(text)
    for table in tomllib.loads(text).get("endpoints", {}).values():
        for entry in (table["modal"]["file"], table["runpod"]["handler"]):
            (root / entry).parent.mkdir(parents=True, exist_ok=True)
            (root / entry).write_text("# stub\n")
    (root / "handlers" / "Dockerfile").write_text("FROM scratch\n")
    return root


def broken(old: str, new: str) -> str:
    """The shipped declaration with one value changed."""
    text = DECLARATION.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any token, registry or fnbundle setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "RUNPOD_", "FNB_"))}
    env["HOME"] = str(home)
    return env


def run_script(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )


def dry_run(root: Path, target: str, *extra: str) -> dict[str, Any]:
    done = run_script(
        "--target", target, "--dry-run", "--root", str(root), "--tag", "t1", *extra, home=root
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class FakeShell:
    """Records every command; ``docker info`` answers ``docker_rc``; modal prints ``output``."""

    def __init__(self, *, docker=False, docker_rc=1, fail="", output="", log=None):
        self.calls: list[list[str]] = [] if log is None else log
        self.docker, self.docker_rc, self.fail, self.output = docker, docker_rc, fail, output

    def which(self, program: str) -> str | None:
        if program == "docker":
            return "/usr/bin/docker" if self.docker else None
        return "/usr/bin/modal" if program == "modal" else None

    def run(self, argv, cwd, *, quiet=False):
        self.calls.append(list(argv))
        if argv[:2] == ["docker", "info"]:
            return self.docker_rc, ""
        if self.fail and any(self.fail in part for part in argv):
            return 1, "failed"
        return 0, self.output(argv) if callable(self.output) else self.output


class FakeRunPod:
    """RunPod's account as far as a deploy sees it: templates and endpoints by id."""

    def __init__(self, log=None):
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = [] if log is None else log

    def state(self):
        self.calls.append(("state", {}))
        return {
            "templates": list(self.templates.values()),
            "endpoints": list(self.endpoints.values()),
        }

    def _save(self, kind: str, store: dict[str, dict[str, Any]], fields) -> dict[str, Any]:
        self.calls.append((kind, dict(fields)))
        item_id = fields.get("id") or f"{kind}-{len(store) + 1}"
        store[item_id] = {**fields, "id": item_id}
        return store[item_id]

    def save_template(self, fields):
        return self._save("saveTemplate", self.templates, fields)

    def save_endpoint(self, fields):
        return self._save("saveEndpoint", self.endpoints, fields)


def mutations(api: FakeRunPod, kind: str) -> dict[str, dict[str, Any]]:
    return {fields["name"]: fields for call, fields in api.calls if call == kind}


# --- the dry-run plan --------------------------------------------------------------------------
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
        "modal run functions/train_classifier.py --data "
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
        done = run_script("--target", target, "--dry-run", home=tmp_path)
        assert done.returncode == 0, done.stderr
        assert set(json.loads(done.stdout)["endpoints"]) == set(load_endpoints(DECLARATION))


def test_only_selects_endpoints_repeated_or_comma_separated(tmp_path):
    root = make_root(tmp_path)
    assert list(dry_run(root, "modal", "--only", "classify")["endpoints"]) == ["classify"]
    both = dry_run(root, "runpod", "--only", "train_classifier,classify")
    assert list(both["endpoints"]) == ["train_classifier", "classify"]
    again = dry_run(root, "runpod", "--only", "classify", "--only", "classify")
    assert list(again["endpoints"]) == ["classify"]


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


# --- refusals before anything runs ------------------------------------------------------------
def test_missing_modal_token_exits_2_and_runs_nothing(tmp_path, capsys):
    root, shell = make_root(tmp_path), FakeShell()
    code = deploy.main(
        ["--target", "modal", "--root", str(root)], shell=shell, environ={"HOME": str(tmp_path)}
    )
    assert code == 2 and shell.calls == []
    assert "modal token new" in capsys.readouterr().err


def test_missing_runpod_key_or_registry_exits_2_and_touches_nothing(tmp_path, capsys):
    root, shell, api = make_root(tmp_path), FakeShell(docker=True, docker_rc=0), FakeRunPod()
    args = ["--target", "runpod", "--root", str(root), "--registry", "docker.io/me"]
    home = {"HOME": str(tmp_path)}
    assert deploy.main(args, shell=shell, runpod_api=api, environ=home) == 2
    assert "RUNPOD_API_KEY" in capsys.readouterr().err
    keyed = {**home, "RUNPOD_API_KEY": "rpa_test"}
    assert deploy.main(args[:4], shell=shell, runpod_api=api, environ=keyed) == 2
    assert "--registry" in capsys.readouterr().err
    assert shell.calls == [] and api.calls == []


def test_dry_run_needs_no_token_and_calls_nothing(tmp_path, capsys):
    root, shell, api = make_root(tmp_path), FakeShell(docker=True, docker_rc=0), FakeRunPod()
    args = ["--target", "runpod", "--root", str(root), "--dry-run"]
    assert deploy.main(args, shell=shell, runpod_api=api, environ={"HOME": str(tmp_path)}) == 0
    assert json.loads(capsys.readouterr().out)["registry"] == "<registry>"
    assert shell.calls == [] and api.calls == []


# --- RunPod execution ---------------------------------------------------------------------------
def runpod_deploy(root: Path, shell: FakeShell, api: FakeRunPod, *extra: str) -> int:
    args = ["--target", "runpod", "--root", str(root), "--tag", "t1", *extra]
    environ = {"HOME": str(root), "RUNPOD_API_KEY": "rpa_test", "FNB_REGISTRY": "docker.io/me"}
    return deploy.main(args, shell=shell, runpod_api=api, environ=environ)


def test_runpod_deploy_creates_then_updates_the_same_endpoints(tmp_path, capsys):
    root, api = make_root(tmp_path), FakeRunPod()
    assert runpod_deploy(root, FakeShell(), api, "--network-volume", "vol-1") == 0
    created = mutations(api, "saveEndpoint")
    templates = mutations(api, "saveTemplate")
    assert set(created) == {"fnbundle-classify", "fnbundle-train-classifier"}
    assert all("id" not in fields for fields in [*created.values(), *templates.values()])
    train = created["fnbundle-train-classifier"]
    assert train["workersMin"] == 0 and train["idleTimeout"] == 5
    assert train["flashBootType"] == "FLASHBOOT" and train["gpuIds"] == "AMPERE_24,ADA_24"
    assert train["networkVolumeId"] == "vol-1"
    classify = created["fnbundle-classify"]
    assert classify["instanceIds"] == ["cpu3c-2-4"] and "gpuIds" not in classify
    assert classify["templateId"] == api.templates[classify["templateId"]]["id"]
    endpoint_id = next(e["id"] for e in api.endpoints.values() if e["name"] == "fnbundle-classify")
    out = capsys.readouterr().out
    assert f"https://api.runpod.ai/v2/{endpoint_id}/runsync" in out
    assert f"curl -s https://api.runpod.ai/v2/{endpoint_id}/runsync" in out

    api.calls.clear()
    assert runpod_deploy(root, FakeShell(), api, "--tag", "t2") == 0
    updated, retemplated = mutations(api, "saveEndpoint"), mutations(api, "saveTemplate")
    assert {f["id"] for f in updated.values()} == set(api.endpoints)  # same ids: updated
    assert {f["id"] for f in retemplated.values()} == set(api.templates)
    assert len(api.endpoints) == 2 and len(api.templates) == 2
    assert retemplated["fnbundle-classify"]["imageName"] == "docker.io/me/fnbundle-classify:t2"
    assert updated["fnbundle-classify"]["workersMin"] == 0


def test_docker_absent_prints_the_commands_instead_of_running_them(tmp_path, capsys):
    root, shell, api = make_root(tmp_path), FakeShell(docker=True, docker_rc=1), FakeRunPod()
    assert runpod_deploy(root, shell, api, "--only", "classify") == 0
    assert shell.calls == [["docker", "info"]]  # the probe only
    out = capsys.readouterr().out
    assert (
        "docker build --platform linux/amd64 -f handlers/Dockerfile "
        "--build-arg HANDLER=classify -t docker.io/me/fnbundle-classify:t1 ." in out
    )
    assert "docker push docker.io/me/fnbundle-classify:t1" in out
    assert set(mutations(api, "saveEndpoint")) == {"fnbundle-classify"}


def test_docker_present_builds_and_pushes_every_image_before_any_mutation(tmp_path):
    log: list[Any] = []  # commands (lists) and API calls (tuples), in the order they happened
    shell, api = FakeShell(docker=True, docker_rc=0, log=log), FakeRunPod(log)
    assert runpod_deploy(make_root(tmp_path), shell, api) == 0
    commands = [entry[:2] for entry in log if isinstance(entry, list)]
    assert commands == [["docker", "info"]] + [["docker", "build"], ["docker", "push"]] * 2
    first_api = next(i for i, entry in enumerate(log) if isinstance(entry, tuple))
    assert first_api == len(commands)  # every command ran before the first API call


def test_failed_push_publishes_nothing(tmp_path):
    shell, api = FakeShell(docker=True, docker_rc=0, fail="push"), FakeRunPod()
    assert runpod_deploy(make_root(tmp_path), shell, api) == 1
    assert api.calls == [] and len(api.templates) == 0


# --- Modal execution ------------------------------------------------------------------------------
def test_modal_deploy_runs_each_app_and_prints_its_url(tmp_path, capsys):
    url = "https://me--fnbundle-classify-classifier-web.modal.run"
    shell = FakeShell(
        output=lambda argv: (
            f"✓ App deployed!\n└── web => {url}\n"
            if "functions/classify.py" in argv
            else "✓ App deployed!\n"
        )
    )
    root = make_root(tmp_path)
    environ = {"HOME": str(tmp_path), "MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}
    code = deploy.main(
        ["--target", "modal", "--root", str(root), "--tag", "t1"], shell=shell, environ=environ
    )
    assert code == 0
    assert shell.calls == [
        ["modal", "deploy", "--tag", "t1", "functions/classify.py"],
        ["modal", "deploy", "--tag", "t1", "functions/train_classifier.py"],
    ]
    out = capsys.readouterr().out
    assert f"curl -s {url}/v1/classify" in out
    assert "modal run functions/train_classifier.py --data data/reviews.csv --name sentiment" in out


def test_modal_token_in_the_config_file_is_enough(tmp_path):
    (tmp_path / ".modal.toml").write_text(
        '[me]\ntoken_id = "ak-x"\ntoken_secret = "as-x"\nactive = true\n'
    )
    shell = FakeShell()
    args = [
        "--target",
        "modal",
        "--root",
        str(make_root(tmp_path)),
        "--only",
        "classify",
        "--env",
        "dev",
    ]
    assert deploy.main(args, shell=shell, environ={"HOME": str(tmp_path)}) == 0
    assert shell.calls[0][:4] == ["modal", "deploy", "--env", "dev"]


def test_failed_modal_deploy_stops_and_exits_1(tmp_path):
    shell = FakeShell(fail="functions/classify.py")
    environ = {"HOME": str(tmp_path), "MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}
    code = deploy.main(
        ["--target", "modal", "--root", str(make_root(tmp_path))], shell=shell, environ=environ
    )
    assert code == 1 and len(shell.calls) == 1


# --- the RunPod API client ------------------------------------------------------------------------
def test_runpod_mutations_are_valid_graphql_literals():
    sent: list[str] = []

    def transport(query: str) -> dict[str, Any]:
        sent.append(query)
        return {"data": {"saveEndpoint": {"id": "ep1"}}}

    api = deploy.RunPodAPI("rpa_test", transport)
    fields = {
        "id": "ep1",
        "name": 'say "hi"\n',
        "workersMin": 0,
        "flashBootType": "FLASHBOOT",
        "instanceIds": ["cpu3c-2-4"],
        "isServerless": True,
    }
    assert api.save_endpoint(fields) == {"id": "ep1"}
    (query,) = sent
    assert query.startswith("mutation { saveEndpoint(input: {")
    assert 'id: "ep1"' in query and "workersMin: 0" in query
    assert "flashBootType: FLASHBOOT" in query  # an enum, not a string
    assert r'name: "say \"hi\"\n"' in query  # escaped, cannot break out of the string
    assert 'instanceIds: ["cpu3c-2-4"]' in query and "isServerless: true" in query


def test_runpod_api_goes_through_the_sdk_graphql_client(monkeypatch):
    import runpod
    from runpod.api import graphql

    sent: list[str] = []
    monkeypatch.setattr(runpod, "api_key", None)

    def fake_query(query: str, api_key: str | None = None) -> dict[str, Any]:
        sent.append(query)
        assert runpod.api_key == "rpa_test"
        return {
            "data": {"myself": {"podTemplates": [{"id": "t1", "name": "x"}], "endpoints": None}}
        }

    monkeypatch.setattr(graphql, "run_graphql_query", fake_query)
    state = deploy.RunPodAPI("rpa_test").state()
    assert state == {"templates": [{"id": "t1", "name": "x"}], "endpoints": []}
    assert sent == [deploy.RunPodAPI.STATE_QUERY]


def test_runpod_api_error_exits_1(tmp_path, capsys):
    class Refusing(FakeRunPod):
        def state(self):
            raise RuntimeError("Unauthorized request, please check your API key.")

    assert runpod_deploy(make_root(tmp_path), FakeShell(), Refusing()) == 1
    assert "Unauthorized" in capsys.readouterr().err


def test_tag_falls_back_to_latest_outside_a_git_checkout(tmp_path):
    assert deploy.git_tag(tmp_path) == "latest"
