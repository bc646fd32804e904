"""handlers/Dockerfile read and its build replayed without a Docker engine.

The Dockerfile is parsed into instructions; ``replay`` walks them in order for one handler:
each ``COPY`` copies from the repository what the build context would hold (``.dockerignore``
applied), each ``RUN`` that installs packages runs in ``sh`` with the ``pip`` found first on
``PATH``. The unit tests put a stand-in ``pip`` there that records its arguments; the image
check (tests/images/test_images.py) puts there a ``pip`` that installs into a fresh virtualenv
(with uv, the same pinned lists). Key rule: nothing
here knows what the Dockerfile installs; it only runs what the Dockerfile says.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

from tests.tiny import REPO

DOCKERFILE = REPO / "handlers" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
RUN_TIMEOUT_S = 900  # one RUN step: torch from a local wheel on 2 busy cores takes minutes


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


def expand(text: str, variables: dict[str, str]) -> str:
    """``${NAME}`` as Docker expands it from build arguments."""
    return re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], text)


def copy_args(args: str) -> tuple[list[str], str]:
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    assert "--from" not in args, "COPY --from is not modelled here"
    *sources, dest = words
    return sources, dest


def copies(handler: str | None = None) -> list[tuple[list[str], PurePosixPath]]:
    """(sources, destination in the image) of every COPY from the build context, with
    ``${HANDLER}`` expanded for ``handler`` (the default handler when None)."""
    variables = {**build_args(), **({"HANDLER": handler} if handler else {})}
    found = []
    for args in args_of("COPY"):
        sources, dest = copy_args(expand(args, variables))
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


def copy_into(source: str, dest: Path) -> None:
    """``COPY source dest`` from the build context: what .dockerignore excludes stays out."""
    origin = REPO / source
    if origin.is_file():
        target = dest / origin.name if str(dest).endswith("/") or dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target)
        return
    for path in sorted(origin.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not ignored(relative):
            target = dest / path.relative_to(origin)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def replay(
    handler: str, app: Path, bin_dir: Path, *, pip: bool = True, **arg_overrides: str
) -> list[subprocess.CompletedProcess[str]]:
    """Build ``handler``'s image into the folder ``app`` (the image's WORKDIR): its COPY steps
    and every RUN step that runs pip (unless ``pip`` is False: the files alone, for a second
    handler whose packages are already installed), with ``bin_dir`` first on PATH. Stops at
    the first failed step; returns each RUN step's outcome."""
    variables = {**build_args(), **arg_overrides, "HANDLER": handler}
    env = {**variables, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    app.mkdir(parents=True, exist_ok=True)
    done: list[subprocess.CompletedProcess[str]] = []
    for keyword, args in instructions():
        if keyword == "COPY":
            sources, dest = copy_args(expand(args, variables))
            target = app / dest
            if dest.endswith("/") and len(sources) == 1:
                target.mkdir(parents=True, exist_ok=True)
            for source in sources:
                if not (REPO / source).exists():
                    raise FileNotFoundError(f"COPY {source}: not in the build context")
                copy_into(source, target)
        elif pip and keyword == "RUN" and "pip " in args:
            step = subprocess.run(
                ["sh", "-c", args],
                env=env,
                cwd=app,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
            )
            done.append(step)
            if step.returncode != 0:
                break
    return done
