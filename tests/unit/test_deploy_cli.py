"""deploy/deploy.py, the command line: arguments, and the credentials and tools a real run needs,
refused (exit 2) before anything runs; a dry run needs none of them."""

from __future__ import annotations

import json

import pytest

from deploy import deploy
from deploy.local import git_tag
from tests.unit.deploy_support import (
    SECRET,
    FakeRunPod,
    FakeShell,
    docker,
    make_root,
    run_script,
)

pytestmark = pytest.mark.unit


# --- arguments ------------------------------------------------------------------------------------
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


def test_tag_falls_back_to_latest_outside_a_git_checkout(tmp_path):
    assert git_tag(tmp_path) == "latest"


# --- refusals before anything runs ----------------------------------------------------------------
def test_missing_modal_token_exits_2_and_runs_nothing(tmp_path, capsys):
    root, shell = make_root(tmp_path), FakeShell()
    code = deploy.main(
        ["--target", "modal", "--root", str(root)],
        shell=shell,
        environ={"HOME": str(tmp_path), **SECRET},
    )
    assert code == 2 and shell.calls == []
    assert "modal token new" in capsys.readouterr().err


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


def test_image_exists_still_needs_the_registry_its_tags_are_in(tmp_path, capsys):
    root, api = make_root(tmp_path), FakeRunPod()
    args = ["--target", "runpod", "--root", str(root), "--image-exists", "--network-volume", "v"]
    environ = {"HOME": str(root), "RUNPOD_API_KEY": "rpa_test"}
    assert deploy.main(args, shell=docker(), runpod_api=api, environ=environ) == 2
    assert "--registry" in capsys.readouterr().err and api.calls == []


def test_dry_run_needs_no_token_and_calls_nothing(tmp_path, capsys):
    root, shell, api = make_root(tmp_path), FakeShell(docker=True, docker_rc=0), FakeRunPod()
    args = ["--target", "runpod", "--root", str(root), "--dry-run"]
    assert deploy.main(args, shell=shell, runpod_api=api, environ={"HOME": str(tmp_path)}) == 0
    assert json.loads(capsys.readouterr().out)["registry"] == "<registry>"
    assert shell.calls == [] and api.calls == []
