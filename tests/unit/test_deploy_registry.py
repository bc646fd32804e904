"""deploy/registry.py: an image reference's manifest URL, and a RunPod deploy that never points an
endpoint at an image nobody pushed, against a fake of a registry's HTTP API v2."""

from __future__ import annotations

import httpx
import pytest

from deploy.registry import manifest_url
from tests.unit.deploy_support import (
    CLASSIFY_IMAGE,
    RUNPOD_NAMES,
    FakeRegistry,
    FakeRunPod,
    FakeShell,
    docker,
    dry_run,
    make_root,
    manifest,
    mutations,
    published,
    runpod_deploy,
)

pytestmark = pytest.mark.unit


# --- image references -----------------------------------------------------------------------------
def test_image_references_map_to_their_registry_manifest():
    assert manifest_url("docker.io/me/x:t1") == manifest("me/x")
    assert manifest_url("me/x:t1") == manifest("me/x")
    assert manifest_url("ubuntu") == manifest("library/ubuntu", "latest")
    assert manifest_url("ghcr.io/a/b/c@sha256:ab") == "https://ghcr.io/v2/a/b/c/manifests/sha256:ab"
    assert manifest_url("localhost:5000/x:1") == "http://localhost:5000/v2/x/manifests/1"


# --- RunPod: never point an endpoint at an image nobody pushed ------------------------------------
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
