"""deploy/deploy.py: the dry-run plan, the checks that refuse to publish, and execution
against fakes of the boundaries it cannot reach here (local commands, RunPod's API, an image
registry's HTTP API)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fnbundle.endpoints import RunPodSpec, load_endpoints

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "deploy.py"
DECLARATION = REPO / "deploy" / "endpoints.toml"
DECLARED = load_endpoints(DECLARATION)  # every endpoint the repository declares
RUNPOD_NAMES = {"fnbundle-" + name.replace("_", "-") for name in DECLARED}


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


SECRET = {"FNB_MODAL_SECRET": "fnbundle-api-keys"}  # Modal web endpoints check bearer keys


def run_script(
    *args: str, home: Path, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env={**clean_env(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def dry_run(
    root: Path, target: str, *extra: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    env = (SECRET if target == "modal" else {}) if env is None else env
    done = run_script(
        "--target",
        target,
        "--dry-run",
        "--root",
        str(root),
        "--tag",
        "t1",
        *extra,
        home=root,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def curl_headers(line: str) -> list[str]:
    """The -H values of a printed curl line, as the shell would pass them."""
    words = shlex.split(line)
    assert words[0] == "curl", line
    return [words[i + 1] for i, word in enumerate(words) if word == "-H"]


def auth_headers(line: str) -> list[str]:
    return [h for h in curl_headers(line) if not h.lower().startswith("content-type")]


class FakeShell:
    """Records every command; ``docker info`` answers ``docker_rc``, ``docker manifest
    inspect`` answers ``inspect_rc``; modal prints ``output``."""

    def __init__(self, *, docker=False, docker_rc=1, inspect_rc=1, fail="", output="", log=None):
        self.calls: list[list[str]] = [] if log is None else log
        self.docker, self.docker_rc, self.fail, self.output = docker, docker_rc, fail, output
        self.inspect_rc = inspect_rc

    def which(self, program: str) -> str | None:
        if program == "docker":
            return "/usr/bin/docker" if self.docker else None
        return "/usr/bin/modal" if program == "modal" else None

    def run(self, argv, cwd, *, quiet=False):
        self.calls.append(list(argv))
        if argv[:2] == ["docker", "info"]:
            return self.docker_rc, ""
        if argv[:3] == ["docker", "manifest", "inspect"]:
            return self.inspect_rc, ""
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
        self.calls.append(("state", {}))  # a read: it changes nothing
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


def published(api: FakeRunPod) -> bool:
    return any(call != "state" for call, _ in api.calls)


class FakeRegistry:
    """An image registry's HTTP API v2, Docker Hub style: a manifest HEAD answers 401 with a
    bearer challenge, the token realm hands out an anonymous token, and the HEAD with it
    answers 200 for a pushed tag and 404 for any other. ``down`` refuses every connection."""

    REALM = "https://auth.docker.io/token"

    def __init__(self, pushed=(), *, down=False):
        self.pushed, self.down = set(pushed), down
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("no route to host", request=request)
        if str(request.url).startswith(self.REALM):
            return httpx.Response(200, json={"token": "anon-token"})
        if request.headers.get("authorization") != "Bearer anon-token":
            challenge = f'Bearer realm="{self.REALM}",service="registry.docker.io"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200 if str(request.url) in self.pushed else 404)

    def client(self):
        return deploy.Registry(httpx.MockTransport(self.handle))

    def heads(self) -> list[str]:
        return [str(r.url) for r in self.requests if r.method == "HEAD"]


def manifest(repository: str, tag: str = "t1") -> str:
    return f"https://registry-1.docker.io/v2/{repository}/manifests/{tag}"


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
        ["--target", "modal", "--root", str(root)],
        shell=shell,
        environ={"HOME": str(tmp_path), **SECRET},
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
def runpod_deploy(
    root: Path, shell: FakeShell, api: FakeRunPod, *extra: str, registry: FakeRegistry | None = None
) -> int:
    args = ["--target", "runpod", "--root", str(root), "--tag", "t1", *extra]
    environ = {"HOME": str(root), "RUNPOD_API_KEY": "rpa_test", "FNB_REGISTRY": "docker.io/me"}
    registry = registry or FakeRegistry()
    return deploy.main(
        args, shell=shell, runpod_api=api, registry=registry.client(), environ=environ
    )


def docker() -> FakeShell:
    """A machine whose Docker engine answers: images are built and pushed in the run."""
    return FakeShell(docker=True, docker_rc=0)


def test_runpod_deploy_creates_then_updates_the_same_endpoints(tmp_path, capsys):
    root, api = make_root(tmp_path), FakeRunPod()
    assert runpod_deploy(root, docker(), api, "--network-volume", "vol-1") == 0
    created = mutations(api, "saveEndpoint")
    templates = mutations(api, "saveTemplate")
    assert set(created) == RUNPOD_NAMES
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
    assert runpod_deploy(root, docker(), api, "--tag", "t2") == 0
    updated, retemplated = mutations(api, "saveEndpoint"), mutations(api, "saveTemplate")
    assert {f["id"] for f in updated.values()} == set(api.endpoints)  # same ids: updated
    assert {f["id"] for f in retemplated.values()} == set(api.templates)
    assert len(api.endpoints) == len(DECLARED) and len(api.templates) == len(DECLARED)
    assert retemplated["fnbundle-classify"]["imageName"] == "docker.io/me/fnbundle-classify:t2"
    assert updated["fnbundle-classify"]["workersMin"] == 0


def test_docker_present_builds_and_pushes_every_image_before_any_mutation(tmp_path):
    log: list[Any] = []  # commands (lists) and API calls (tuples), in the order they happened
    shell, api, registry = (
        FakeShell(docker=True, docker_rc=0, log=log),
        FakeRunPod(log),
        FakeRegistry(),
    )
    assert (
        runpod_deploy(make_root(tmp_path), shell, api, "--network-volume", "v", registry=registry)
        == 0
    )
    commands = [entry[:2] for entry in log if isinstance(entry, list)]
    assert commands == [["docker", "info"]] + [["docker", "build"], ["docker", "push"]] * len(
        DECLARED
    )
    first_mutation = next(
        i for i, entry in enumerate(log) if isinstance(entry, tuple) and entry[0] != "state"
    )
    assert first_mutation == len(commands) + 1  # the state read, every command, then mutations
    assert registry.requests == []  # pushed in this run: nothing to ask the registry


def test_failed_push_publishes_nothing(tmp_path):
    shell, api = FakeShell(docker=True, docker_rc=0, fail="push"), FakeRunPod()
    assert runpod_deploy(make_root(tmp_path), shell, api, "--network-volume", "v") == 1
    assert not published(api) and len(api.templates) == 0


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
        ["--target", "modal", "--root", str(root), "--tag", "t1"],
        shell=shell,
        environ={**environ, **SECRET},
    )
    assert code == 0
    assert shell.calls == [
        ["modal", "deploy", "--tag", "t1", endpoint.modal.file] for endpoint in DECLARED.values()
    ]
    out = capsys.readouterr().out
    assert f"curl -s {url}/v1/classify" in out
    assert (
        "modal run --detach functions/train_classifier.py --data data/reviews.csv --name sentiment"
        in out
    )


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
    assert deploy.main(args, shell=shell, environ={"HOME": str(tmp_path), **SECRET}) == 0
    assert shell.calls[0][:4] == ["modal", "deploy", "--env", "dev"]


def test_failed_modal_deploy_stops_and_exits_1(tmp_path):
    shell = FakeShell(fail="functions/classify.py")
    environ = {"HOME": str(tmp_path), "MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}
    environ |= SECRET
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


# --- RunPod: never point an endpoint at an image nobody pushed --------------------------------
CLASSIFY_IMAGE = manifest("me/fnbundle-classify")


def test_no_docker_and_image_not_in_registry_publishes_nothing_and_exits_2(tmp_path, capsys):
    api, registry = FakeRunPod(), FakeRegistry()  # the tag was never pushed
    code = runpod_deploy(
        make_root(tmp_path), FakeShell(), api, "--only", "classify", registry=registry
    )
    assert code == 2 and not published(api)
    assert registry.heads() == [CLASSIFY_IMAGE, CLASSIFY_IMAGE]  # anonymous, then with a token
    captured = capsys.readouterr()
    assert "docker.io/me/fnbundle-classify:t1 is not known to exist (missing)" in captured.err
    assert "Nothing was published" in captured.err
    for way in ("Docker engine", "--image NAME=REF", "--image-exists"):
        assert way in captured.err
    assert "docker push docker.io/me/fnbundle-classify:t1" in captured.out  # what to run


def test_no_docker_but_image_in_registry_publishes_it(tmp_path):
    api, registry = FakeRunPod(), FakeRegistry(pushed=[CLASSIFY_IMAGE])  # pushed by CI
    shell = FakeShell()
    assert (
        runpod_deploy(make_root(tmp_path), shell, api, "--only", "classify", registry=registry) == 0
    )
    template = mutations(api, "saveTemplate")["fnbundle-classify"]
    assert template["imageName"] == "docker.io/me/fnbundle-classify:t1"
    head = next(r for r in registry.requests if r.method == "HEAD")
    assert "application/vnd.oci.image.index.v1+json" in head.headers["accept"]
    assert all(call[:2] != ["docker", "build"] for call in shell.calls)


def test_unreachable_registry_refuses_unless_docker_can_inspect_the_manifest(tmp_path, capsys):
    root, api = make_root(tmp_path), FakeRunPod()
    down = FakeRegistry(down=True)
    assert runpod_deploy(root, FakeShell(), api, "--only", "classify", registry=down) == 2
    assert not published(api) and "did not answer" in capsys.readouterr().err
    # The docker CLI without an engine still reads manifests, with docker login's credentials.
    shell = FakeShell(docker=True, docker_rc=1, inspect_rc=0)
    assert runpod_deploy(root, shell, api, "--only", "classify", registry=down) == 0
    assert ["docker", "manifest", "inspect", "docker.io/me/fnbundle-classify:t1"] in shell.calls
    assert set(mutations(api, "saveEndpoint")) == {"fnbundle-classify"}


def test_private_repository_the_registry_will_not_show_is_refused(tmp_path, capsys):
    class Private(FakeRegistry):
        def handle(self, request):
            self.requests.append(request)
            if str(request.url).startswith(self.REALM):
                return httpx.Response(200, json={"token": "anon-token"})
            challenge = f'Bearer realm="{self.REALM}",service="registry.docker.io"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    api, registry = FakeRunPod(), Private()
    code = runpod_deploy(
        make_root(tmp_path), FakeShell(), api, "--only", "classify", registry=registry
    )
    assert code == 2 and not published(api)
    assert "wants credentials" in capsys.readouterr().err


def test_image_exists_builds_nothing_checks_nothing_and_publishes(tmp_path):
    api, registry, shell = FakeRunPod(), FakeRegistry(down=True), docker()
    code = runpod_deploy(
        make_root(tmp_path),
        shell,
        api,
        "--image-exists",
        "--network-volume",
        "v",
        registry=registry,
    )
    assert code == 0 and registry.requests == [] and shell.calls == []
    assert set(mutations(api, "saveEndpoint")) == RUNPOD_NAMES


def test_image_exists_still_needs_the_registry_its_tags_are_in(tmp_path, capsys):
    root, api = make_root(tmp_path), FakeRunPod()
    args = ["--target", "runpod", "--root", str(root), "--image-exists", "--network-volume", "v"]
    environ = {"HOME": str(root), "RUNPOD_API_KEY": "rpa_test"}
    assert deploy.main(args, shell=docker(), runpod_api=api, environ=environ) == 2
    assert "--registry" in capsys.readouterr().err and api.calls == []


def test_prebuilt_image_is_published_as_named_once_found(tmp_path):
    ref = "ghcr.io/acme/classify-worker:v7"
    pushed = FakeRegistry(pushed=["https://ghcr.io/v2/acme/classify-worker/manifests/v7"])
    api, shell = FakeRunPod(), docker()
    assert (
        runpod_deploy(
            make_root(tmp_path), shell, api, "--only", "classify", "--image", ref, registry=pushed
        )
        == 0
    )
    assert mutations(api, "saveTemplate")["fnbundle-classify"]["imageName"] == ref
    assert shell.calls == []  # nothing to build
    plan = dry_run(make_root(tmp_path / "b"), "runpod", "--image", f"classify={ref}")
    assert plan["endpoints"]["classify"]["image"] == ref
    assert plan["endpoints"]["classify"]["image_source"] == "prebuilt"
    assert plan["endpoints"]["train_classifier"]["image_source"] == "build"


def test_image_references_map_to_their_registry_manifest():
    assert deploy.manifest_url("docker.io/me/x:t1") == manifest("me/x")
    assert deploy.manifest_url("me/x:t1") == manifest("me/x")
    assert deploy.manifest_url("ubuntu") == manifest("library/ubuntu", "latest")
    assert (
        deploy.manifest_url("ghcr.io/a/b/c@sha256:ab")
        == "https://ghcr.io/v2/a/b/c/manifests/sha256:ab"
    )
    assert deploy.manifest_url("localhost:5000/x:1") == "http://localhost:5000/v2/x/manifests/1"


def test_dry_run_says_how_each_image_is_known(tmp_path):
    plan = dry_run(make_root(tmp_path), "runpod", "--registry", "docker.io/me")
    entry = plan["endpoints"]["classify"]
    assert entry["image_source"] == "build"
    assert entry["image_check"] == f"HEAD {CLASSIFY_IMAGE}"
    assert "Docker engine" in plan["images"] and "exit 2" in plan["images"]
    vouched = dry_run(make_root(tmp_path / "b"), "runpod", "--image-exists")
    assert all(e["image_check"] is None for e in vouched["endpoints"].values())
    assert all(len(e["steps"]) == 2 for e in vouched["endpoints"].values())  # API steps only


# --- Modal: no web endpoint answers anyone unless --public says so -----------------------------
MODAL_TOKEN = {"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}


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


def test_modal_proxy_auth_that_is_not_a_boolean_exits_2(tmp_path):
    done = run_script(
        "--target",
        "modal",
        "--dry-run",
        "--root",
        str(make_root(tmp_path)),
        home=tmp_path,
        env={"FNB_MODAL_PROXY_AUTH": "maybe"},
    )
    assert done.returncode == 2 and "FNB_MODAL_PROXY_AUTH" in done.stderr


def test_runpod_curl_lines_send_the_key_as_a_bearer_token(tmp_path, capsys):
    api = FakeRunPod()
    assert runpod_deploy(make_root(tmp_path), docker(), api, "--network-volume", "v") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("curl")]
    assert len(lines) == len(DECLARED)
    for line in lines:
        assert auth_headers(line) == ["Authorization: Bearer $RUNPOD_API_KEY"]


# --- every declared setting reaches the platform ------------------------------------------------
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


def test_gpu_endpoint_sends_its_cuda_versions_to_runpod(tmp_path):
    api = FakeRunPod()
    assert runpod_deploy(make_root(tmp_path), docker(), api, "--network-volume", "v") == 0
    saved = mutations(api, "saveEndpoint")
    assert saved["fnbundle-train-classifier"]["allowedCudaVersions"] == "12.8,12.9,13.0"
    assert "allowedCudaVersions" not in saved["fnbundle-classify"]  # CPU: no CUDA


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
    options = deploy.Options(target="runpod", tag="t1", root=root, config=config)
    plan = deploy.build_plan("runpod", list(load_endpoints(config).values()), options)
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


# --- the network volume -----------------------------------------------------------------------------
def test_redeploy_without_network_volume_keeps_the_endpoints_volume(tmp_path):
    root, api = make_root(tmp_path), FakeRunPod()
    assert runpod_deploy(root, docker(), api, "--network-volume", "vol-1") == 0
    api.calls.clear()
    assert runpod_deploy(root, docker(), api, "--tag", "t2") == 0
    updated = mutations(api, "saveEndpoint")
    assert {f["networkVolumeId"] for f in updated.values()} == {"vol-1"}
    assert all("id" in f for f in updated.values())  # updates, not new endpoints
    api.calls.clear()
    assert runpod_deploy(root, docker(), api, "--network-volume", "vol-2") == 0  # a new one wins
    assert {f["networkVolumeId"] for f in mutations(api, "saveEndpoint").values()} == {"vol-2"}


def test_training_endpoint_without_any_network_volume_is_refused(tmp_path, capsys):
    api, shell = FakeRunPod(), docker()
    assert runpod_deploy(make_root(tmp_path), shell, api) == 2
    assert not published(api) and shell.calls == []  # refused before any build
    message = capsys.readouterr().err
    assert "train_classifier" in message and "--network-volume" in message
    # A serving endpoint may serve models baked into its image.
    assert runpod_deploy(make_root(tmp_path / "b"), docker(), api, "--only", "classify") == 0


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
