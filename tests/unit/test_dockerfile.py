"""handlers/Dockerfile against the repository: what it copies exists and reaches the build
context, every RunPod endpoint in deploy/endpoints.toml gets a worker that starts its
handler, and each image installs only what its handler needs (no dev tools, no caches).

No Docker engine is needed: the Dockerfile is parsed, and its install step runs in a shell
with a stand-in ``pip`` that records what it was asked to install.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import stat
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from fnbundle.endpoints import CONTAINER_PATHS, load_endpoints

from tests.conftest import REPO

pytestmark = pytest.mark.unit

DOCKERFILE = REPO / "handlers" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
EXTRAS = set(
    tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            found.append((keyword.upper(), args.strip()))
    return found


def args_of(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def build_args() -> dict[str, str]:
    """ARG defaults."""
    defaults = {}
    for arg in args_of("ARG"):
        name, _, value = arg.partition("=")
        defaults[name] = value
    return defaults


def workdir() -> PurePosixPath:
    (only,) = args_of("WORKDIR")
    return PurePosixPath(only)


def copies() -> list[tuple[list[str], PurePosixPath]]:
    """(sources, destination in the image) of every COPY from the build context."""
    found = []
    for args in args_of("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert "--from" not in args, "COPY --from is not checked here"
        *sources, dest = words
        found.append((sources, workdir() / dest))
    return found


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder above it) out of the context."""
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    parts = PurePosixPath(path).parts
    for i in range(len(parts)):
        prefix = "/".join(parts[: i + 1])
        for pattern in patterns:
            if pattern.startswith("**/"):  # at any depth
                if fnmatch.fnmatch(parts[i], pattern.removeprefix("**/")):
                    return True
            elif fnmatch.fnmatch(prefix, pattern):
                return True
    return False


def image_path_to_repo(image_path: PurePosixPath) -> Path | None:
    """The repository file a path inside the image was copied from, if any."""
    for sources, dest in copies():
        for source in sources:
            # One source lands at the destination itself (a folder's contents, or the file).
            target = dest if len(sources) == 1 else dest / source
            if image_path == target or target in image_path.parents:
                return REPO / source / image_path.relative_to(target)
    return None


def install(handler: str, tmp_path: Path) -> list[list[str]]:
    """Run the Dockerfile's install step for ``handler``; return the pip commands it ran."""
    (step,) = [run for run in args_of("RUN") if "pip install" in run]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "pip-calls"
    pip = fake_bin / "pip"
    pip.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> {record}\nprintf "\\n" >> {record}\n')
    pip.chmod(pip.stat().st_mode | stat.S_IEXEC)
    env = {**build_args(), "HANDLER": handler, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", "-c", step], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    calls = record.read_text().splitlines() if record.exists() else []
    return [call.rstrip("\0").split("\0") for call in calls]


def test_every_copy_source_exists_and_reaches_the_context() -> None:
    assert copies()
    for sources, _dest in copies():
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
def test_each_image_installs_only_what_its_handler_needs(endpoint: str, tmp_path: Path) -> None:
    spec = load_endpoints()[endpoint]
    calls = install(Path(spec.runpod.handler).stem, tmp_path)
    assert calls and all("--no-cache-dir" in call for call in calls)
    *before, package = calls
    (target,) = [arg for arg in package if arg.startswith(".[")]
    extras = set(target.removeprefix(".[").removesuffix("]").split(","))
    assert "runpod" in extras and extras <= EXTRAS
    assert not extras & {"dev", "bench", "modal"}, extras
    trains = spec.task.startswith(("train", "finetune"))
    assert ("train" in extras) == trains
    # Training images get torch first, pinned, from PyTorch's index; serving images none.
    assert [c for c in before if any(a.startswith("torch") for a in c)] == before
    assert len(before) == (1 if trains else 0)
    if trains:
        assert f"torch=={build_args()['TORCH_VERSION']}" in before[0]
        assert "--index-url" in before[0]


def test_an_undeclared_handler_fails_the_build(tmp_path: Path) -> None:
    (step,) = [run for run in args_of("RUN") if "pip install" in run]
    env = {**build_args(), "HANDLER": "nope", "PATH": os.environ["PATH"]}
    done = subprocess.run(
        ["sh", "-c", step], env=env, cwd=tmp_path, capture_output=True, timeout=30
    )
    assert done.returncode != 0


def test_no_pip_cache_in_the_image() -> None:
    env = " ".join(args_of("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env
    for run in args_of("RUN"):
        for command in re.findall(r"pip install[^;|&]*", run):
            assert "--no-cache-dir" in command, command
