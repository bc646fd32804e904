"""The lock (requirements/*.txt, written by `make lock`) against pyproject.toml and itself.

Each lock is read as `make lock` writes it: which extras it holds comes from the Makefile's
recipe. A lock is stale when a dependency in pyproject.toml is missing from it, pinned
outside its range, or was removed from pyproject.toml and is still pinned as ours; the
contents are compared, never file times. The locks agree with each other (one version per
package), hold torch at requirements/constraints.in's version, and only torch-cuda.txt holds
the CUDA runtime.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

pytestmark = pytest.mark.unit

LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
OURS = "fnbundle (pyproject.toml)"  # uv's annotation of a dependency we declare
# The platform every lock is resolved for (`make lock`: Linux x86_64, Python 3.11).
TARGET = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
TARGET |= {"python_version": "3.11", "python_full_version": "3.11.7", "os_name": "posix"}
TARGET |= {"implementation_name": "cpython", "platform_python_implementation": "CPython"}
CUDA_RUNTIME = re.compile(r"^(nvidia-|cuda-|triton$)")


def recipes() -> dict[str, tuple[str, list[str]]]:
    """Lock file name -> (input, extras) for every `$(COMPILE)` line of `make lock`."""
    makefile = re.sub(r"\\\n\s*", " ", (REPO / "Makefile").read_text())
    found = {}
    for line in makefile.splitlines():
        if not line.strip().startswith("$(COMPILE)"):
            continue
        words = shlex.split(line.replace("$(LOCKS)", "requirements"))
        output = Path(words[words.index("-o") + 1]).name
        extras = [words[i + 1] for i, w in enumerate(words) if w == "--extra"]
        if "--all-extras" in words:
            extras = sorted(PYPROJECT["optional-dependencies"])
        found[output] = (words[1], extras)
    return found


RECIPES = recipes()
# The generate task's GPU serving images run vLLM, which pins its own torch, transformers and
# CUDA runtime: their locks are resolved with pyproject.toml but not against dev.txt.
VLLM_LOCKS = frozenset({"vllm.txt", "runpod-generate.txt"})
PROJECT_LOCKS = sorted(
    name
    for name, (source, _) in RECIPES.items()
    if source == "pyproject.toml" or name in VLLM_LOCKS
)
DEV_LOCKS = sorted(set(RECIPES) - VLLM_LOCKS)  # the locks that run the tests' versions


def pins(lock: str) -> dict[str, str]:
    """Canonical name -> version of every pin in ``requirements/<lock>``."""
    found = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;#]+)", (LOCKS / lock).read_text(), re.M)
    return {canonicalize_name(name): version for name, version in found}


def ours(lock: str) -> set[str]:
    """The pins uv annotated as coming from pyproject.toml (`# via ... fnbundle ...`)."""
    found, current = set(), None
    for line in (LOCKS / lock).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==", line):
            current = canonicalize_name(match.group(1))
        if current and OURS in line:
            found.add(current)
    return found


def declared(extras: list[str]) -> list[Requirement]:
    """pyproject.toml's requirements for the core plus ``extras``, on the lock's platform."""
    lines = PYPROJECT["dependencies"] + [
        req for extra in extras for req in PYPROJECT["optional-dependencies"][extra]
    ]
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**TARGET, "extra": ""})]


def test_make_lock_writes_every_lock_and_they_exist() -> None:
    assert {"dev.txt", "serve.txt", "train.txt", "torch-cuda.txt"} <= set(RECIPES)
    for name in RECIPES:
        assert (LOCKS / name).is_file(), f"requirements/{name}: run `make lock`"
    # dev.txt is the virtualenv: every extra.
    assert RECIPES["dev.txt"][1] == sorted(PYPROJECT["optional-dependencies"])


@pytest.mark.parametrize("lock", PROJECT_LOCKS)
def test_every_declared_dependency_is_pinned_within_its_range(lock: str) -> None:
    locked = pins(lock)
    for req in declared(RECIPES[lock][1]):
        name = canonicalize_name(req.name)
        assert name in locked, f"{lock}: {req} is not locked: run `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{lock}: {name}=={locked[name]} is outside {req}: run `make lock`"
        )
        for extra in req.extras:  # e.g. uvicorn[standard]: what the extra adds is locked too
            for dep in map(Requirement, metadata.requires(req.name) or []):
                if dep.marker is None or dep.marker.evaluate({**TARGET, "extra": extra}):
                    assert canonicalize_name(dep.name) in locked, f"{lock}: {req} needs {dep}"


@pytest.mark.parametrize("lock", PROJECT_LOCKS)
def test_no_lock_keeps_a_dependency_pyproject_dropped(lock: str) -> None:
    wanted = {canonicalize_name(r.name) for r in declared(RECIPES[lock][1])}
    stale = ours(lock) - wanted
    assert not stale, f"{lock} still pins {sorted(stale)} for pyproject.toml: run `make lock`"
    assert ours(lock), f"{lock}: no pin is annotated as ours; was it written by `make lock`?"


@pytest.mark.parametrize("lock", DEV_LOCKS)
def test_every_lock_pins_the_versions_of_dev_txt(lock: str) -> None:
    """The images run the versions the test suite ran with, in the virtualenv."""
    dev = pins("dev.txt")
    cuda = {name for name in pins(lock) if CUDA_RUNTIME.match(name)}
    differ = {
        name: (version, dev.get(name))
        for name, version in pins(lock).items()
        if name not in cuda and dev.get(name) != version
    }
    assert not differ, f"{lock} differs from dev.txt: {differ}"


def test_torch_is_locked_at_the_constrained_version() -> None:
    (wanted,) = re.findall(r"^torch==(\S+)", (LOCKS / "constraints.in").read_text(), re.M)
    for lock in DEV_LOCKS:
        assert pins(lock).get("torch", wanted) == wanted, lock
    assert "torch" in pins("train.txt") and "torch" not in pins("serve.txt")


def test_only_the_gpu_torch_layer_holds_the_cuda_runtime() -> None:
    """The virtualenv and CPU images run torch's CPU build: a CUDA package in their lock is a
    multi-gigabyte download nothing uses (name it in requirements/cuda-runtime.in)."""
    for lock in sorted(set(PROJECT_LOCKS) - VLLM_LOCKS):
        cuda = sorted(name for name in pins(lock) if CUDA_RUNTIME.match(name))
        assert not cuda, f"{lock} holds {cuda}: add them to requirements/cuda-runtime.in"
    gpu = pins("torch-cuda.txt")
    assert "torch" in gpu and any(CUDA_RUNTIME.match(name) for name in gpu)
    # Beyond the CUDA runtime, the torch layer is what train.txt installs anyway.
    train = pins("train.txt")
    rest = {name: v for name, v in gpu.items() if not CUDA_RUNTIME.match(name)}
    assert rest.items() <= train.items()


def test_setup_installs_torch_then_the_dev_lock_then_the_project_alone() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    installs = [line.strip() for line in recipe.splitlines() if "pip install" in line]
    assert [line.split("pip install -q ", 1)[1] for line in installs[-3:]] == [
        "$(TORCH)",
        "-r $(LOCKS)/dev.txt",
        "--no-deps -e .",
    ]
    # $(TORCH) is the locked torch, read from the lock itself.
    done = subprocess.run(
        ["make", "-s", "--eval", "print-torch: ; @echo $(TORCH)", "print-torch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == f"torch=={pins('dev.txt')['torch']}", done.stderr


def test_the_vllm_images_run_the_pinned_vllm_with_its_own_torch_and_agree() -> None:
    """vllm.in's pin is what both vLLM locks hold, with vLLM's torch and CUDA runtime; the
    RunPod worker's lock is the Modal image's plus the RunPod SDK, at the same versions."""
    (wanted,) = re.findall(r"^vllm==(\S+)", (LOCKS / "vllm.in").read_text(), re.M)
    modal, runpod = pins("vllm.txt"), pins("runpod-generate.txt")
    assert modal["vllm"] == runpod["vllm"] == wanted
    assert "torch" in modal and any(CUDA_RUNTIME.match(name) for name in modal)
    differ = {k: (v, runpod.get(k)) for k, v in modal.items() if runpod.get(k) != v}
    assert not differ, f"runpod-generate.txt differs from vllm.txt: {differ}"
    assert "runpod" in runpod and "runpod" not in modal
