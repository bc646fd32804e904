"""deploy/execute.py: a real run against fakes of the boundaries it cannot reach here (local
commands, RunPod's API, an image registry): what runs in which order, what is created or
updated, what a failure leaves unpublished, and the network volume."""

from __future__ import annotations

from typing import Any

import pytest

from deploy import deploy
from tests.unit.deploy_support import (
    DECLARED,
    RUNPOD_NAMES,
    SECRET,
    FakeRegistry,
    FakeRunPod,
    FakeShell,
    auth_headers,
    docker,
    make_root,
    mutations,
    published,
    runpod_deploy,
)

pytestmark = pytest.mark.unit


# --- RunPod execution -----------------------------------------------------------------------------
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


def test_runpod_api_error_exits_1(tmp_path, capsys):
    class Refusing(FakeRunPod):
        def state(self):
            raise RuntimeError("Unauthorized request, please check your API key.")

    assert runpod_deploy(make_root(tmp_path), FakeShell(), Refusing()) == 1
    assert "Unauthorized" in capsys.readouterr().err


def test_runpod_curl_lines_send_the_key_as_a_bearer_token(tmp_path, capsys):
    api = FakeRunPod()
    assert runpod_deploy(make_root(tmp_path), docker(), api, "--network-volume", "v") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("curl")]
    assert len(lines) == len(DECLARED)
    for line in lines:
        assert auth_headers(line) == ["Authorization: Bearer $RUNPOD_API_KEY"]


def test_gpu_endpoint_sends_its_cuda_versions_to_runpod(tmp_path):
    api = FakeRunPod()
    assert runpod_deploy(make_root(tmp_path), docker(), api, "--network-volume", "v") == 0
    saved = mutations(api, "saveEndpoint")
    assert saved["fnbundle-train-classifier"]["allowedCudaVersions"] == "12.8,12.9,13.0"
    assert "allowedCudaVersions" not in saved["fnbundle-classify"]  # CPU: no CUDA


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


def test_failed_modal_deploy_stops_and_exits_1(tmp_path):
    shell = FakeShell(fail="functions/classify.py")
    environ = {"HOME": str(tmp_path), "MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}
    environ |= SECRET
    code = deploy.main(
        ["--target", "modal", "--root", str(make_root(tmp_path))], shell=shell, environ=environ
    )
    assert code == 1 and len(shell.calls) == 1


# --- the network volume ---------------------------------------------------------------------------
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
