"""What the deploy tests share: a repository root holding a declaration and the files it names,
the command line run as a user runs it, and fakes of the boundaries a deploy cannot reach here
(local commands, RunPod's API, an image registry's HTTP API)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
from fnbundle.endpoints import load_endpoints

from deploy import deploy
from deploy.registry import Registry

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "deploy.py"
DECLARATION = REPO / "deploy" / "endpoints.toml"
DECLARED = load_endpoints(DECLARATION)  # every endpoint the repository declares
RUNPOD_NAMES = {"fnbundle-" + name.replace("_", "-") for name in DECLARED}
SECRET = {"FNB_MODAL_SECRET": "fnbundle-api-keys"}  # Modal web endpoints check bearer keys
MODAL_TOKEN = {"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}


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
        return Registry(httpx.MockTransport(self.handle))

    def heads(self) -> list[str]:
        return [str(r.url) for r in self.requests if r.method == "HEAD"]


def manifest(repository: str, tag: str = "t1") -> str:
    return f"https://registry-1.docker.io/v2/{repository}/manifests/{tag}"


CLASSIFY_IMAGE = manifest("me/fnbundle-classify")


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
