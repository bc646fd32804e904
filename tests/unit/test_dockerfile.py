"""handlers/Dockerfile against the repository: what it copies exists and reaches the build
context, every RUN step reads the lock of the handler it builds, every RunPod endpoint in
deploy/endpoints.toml gets a worker that starts its handler, each image installs only what
its handler needs (no dev tools, no caches), and the source comes after the dependencies.

No Docker engine is needed: the Dockerfile is parsed, and its steps are replayed in a shell
with a stand-in ``pip`` that records what it was asked to install.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path, PurePosixPath

import pytest
from fnbundle.endpoints import CONTAINER_PATHS, load_endpoints

from tests.conftest import REPO
from tests.images.dockerfile import (
    args_of,
    build_args,
    copies,
    ignored,
    image_path_to_repo,
    instructions,
    replay,
)

pytestmark = pytest.mark.unit

LOCKS = REPO / "requirements"
TOOLS = {"pytest", "ruff", "mypy", "locust", "schemathesis", "uv", "modal"}  # never in a worker


def handlers() -> dict[str, str]:
    """Handler name (handlers/<name>.py) -> task, for every declared RunPod endpoint."""
    return {Path(e.runpod.handler).stem: e.task for e in load_endpoints().values()}


def locked(path: Path) -> dict[str, str]:
    """name -> version of every pin in a lock file."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)", path.read_text(), flags=re.M)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def install(handler: str, tmp_path: Path) -> list[list[str]]:
    """Replay the build for ``handler``; return the pip commands its RUN steps ran."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "pip-calls"
    pip = fake_bin / "pip"
    pip.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> {record}\nprintf "\\n" >> {record}\n')
    pip.chmod(pip.stat().st_mode | stat.S_IEXEC)
    steps = replay(handler, tmp_path / "app", fake_bin)
    for step in steps:
        assert step.returncode == 0, step.stderr
    calls = record.read_text().splitlines() if record.exists() else []
    return [call.rstrip("\0").split("\0") for call in calls]


@pytest.mark.parametrize("handler", sorted(handlers()), ids=str)
def test_every_copy_source_exists_and_reaches_the_context(handler: str) -> None:
    assert copies(handler)
    for sources, _dest in copies(handler):
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_and_tests_out() -> None:
    for path in (".venv", ".fnbundle/store", "tests/unit", ".git/config", "shared/x.egg-info"):
        assert ignored(path), path


def test_the_endpoint_declaration_lands_where_the_package_looks() -> None:
    assert any(
        dest in {PurePosixPath(p) for p in CONTAINER_PATHS} and sources == ["deploy/endpoints.toml"]
        for sources, dest in copies()
    )


def test_cmd_starts_the_handler_of_every_declared_runpod_endpoint() -> None:
    (cmd,) = args_of("CMD")
    script = re.search(r"(/\S+?\$\{HANDLER\}\.py)", cmd)
    assert script, cmd
    assert cmd.startswith("exec "), "the handler must be PID 1 to receive SIGTERM"
    assert "HANDLER=${HANDLER}" in " ".join(args_of("ENV")), "CMD reads HANDLER at run time"
    handlers = {Path(e.runpod.handler).stem: e for e in load_endpoints().values()}
    assert build_args()["HANDLER"] in handlers
    for stem, endpoint in handlers.items():
        in_image = PurePosixPath(script.group(1).strip('"').replace("${HANDLER}", stem))
        source = image_path_to_repo(in_image)
        assert source == REPO / endpoint.runpod.handler, (stem, in_image, source)
        assert source.is_file()


@pytest.mark.parametrize("endpoint", sorted(load_endpoints()), ids=str)
def test_each_image_installs_exactly_its_lock(endpoint: str, tmp_path: Path) -> None:
    spec = load_endpoints()[endpoint]
    handler = Path(spec.runpod.handler).stem
    lock = f"requirements/runpod-{handler}.txt"
    pins = locked(REPO / lock)
    calls = install(handler, tmp_path)
    installs = [call for call in calls if call[0] == "install"]
    assert installs and all("--no-cache-dir" in call for call in installs)
    *torch, deps, project = installs
    # Training images get torch first, alone, at the locked version, from PyTorch's index;
    # so does a vLLM worker (an llm endpoint), from the index deploy passes (PyPI's build).
    trains = spec.task.startswith(("train", "finetune"))
    assert ("torch" in pins) == (trains or spec.llm is not None)
    if "torch" in pins:
        (only,) = torch
        assert f"torch=={pins['torch']}" in only
        assert only[only.index("--index-url") + 1] == build_args()["TORCH_INDEX"]
    else:
        assert torch == [] and not any("torch" in arg for call in calls for arg in call)
    # Then the lock as it is: nothing resolved, and a consistency check of the result.
    assert deps[deps.index("-r") + 1] == lock and "--no-deps" in deps
    assert calls[calls.index(deps) + 1] == ["check"]
    # Then the project itself, which adds no package.
    assert project[-1] == "." and "--no-deps" in project
    # A worker holds its handler's runtime and none of the tools.
    assert "runpod" in pins and not TOOLS & set(pins), sorted(TOOLS & set(pins))


def test_dependencies_install_before_the_source_arrives() -> None:
    """A code change must not invalidate the dependency layers."""
    steps = instructions()
    (deps,) = [
        i
        for i, (kw, args) in enumerate(steps)
        if kw == "RUN" and "pip install" in args and " -r " in args
    ]
    copied_before = [args for kw, args in steps[:deps] if kw == "COPY"]
    assert copied_before and all(args.startswith("requirements/") for args in copied_before)
    sources = [args for kw, args in steps[deps:] if kw == "COPY"]
    assert any(args.startswith("shared ") for args in sources)


def test_an_undeclared_handler_fails_the_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="runpod-nope.txt"):
        replay("nope", tmp_path / "app", tmp_path)


def test_no_pip_cache_in_the_image() -> None:
    env = " ".join(args_of("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env
    for run in args_of("RUN"):
        for command in re.findall(r"pip install[^;|&]*", run):
            assert "--no-cache-dir" in command, command
