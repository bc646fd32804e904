"""This machine as a deploy sees it: its terminal, the commands it runs, git and Modal's token.

Key rule: the commands a deploy runs (modal, docker) go through :class:`Shell`, which tests
replace with a recorder; the rest only reads (the commit's short sha, Modal's token) and never
fails a deploy by itself: a missing answer is ``latest`` or ``False`` for the caller to judge.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console

GIT_TIMEOUT_S = 10  # seconds

err = Console(stderr=True, highlight=False, soft_wrap=True)  # long lines stay whole


def modal_token_found(environ: Mapping[str, str]) -> bool:
    if environ.get("MODAL_TOKEN_ID") and environ.get("MODAL_TOKEN_SECRET"):
        return True
    home = Path(environ.get("HOME") or Path.home())
    config = Path(environ.get("MODAL_CONFIG_PATH") or home / ".modal.toml")
    try:
        profiles = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return any(
        isinstance(p, dict) and p.get("token_id") and p.get("token_secret")
        for p in profiles.values()
    )


def git_tag(root: Path) -> str:
    """The commit's short sha, so every image names the code it holds; else 'latest'."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "latest"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "latest"


class Shell:
    """Runs local commands (modal, docker). Tests replace it with a recorder."""

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def run(self, argv: Sequence[str], cwd: Path, *, quiet: bool = False) -> tuple[int, str]:
        """Exit status and output; the output also streams to stderr unless ``quiet``."""
        try:
            if quiet:
                done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
                return done.returncode, done.stdout + done.stderr
            with subprocess.Popen(
                list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc:
                assert proc.stdout is not None
                lines = []
                for line in proc.stdout:
                    sys.stderr.write(line)
                    lines.append(line)
                return proc.wait(), "".join(lines)
        except OSError as exc:
            return 127, str(exc)
