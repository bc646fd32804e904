"""A real gateway: `fnbundle serve` in a subprocess on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

FNBUNDLE = [sys.executable, "-m", "fnbundle.cli"]
START_TIMEOUT = 60  # seconds for the gateway to load its models on a busy 2-core machine


def fnb_env(store: Path, **extra: str) -> dict[str, str]:
    # no FNB_ setting of this process leaks in, but its thread cap (tests/conftest.py: one
    # per xdist worker): a gateway on every core would oversubscribe the other worker's
    env = {k: v for k, v in os.environ.items() if not k.startswith("FNB_") or k == "FNB_THREADS"}
    env.update({"FNB_STORE": str(store), "FNB_DATA_ROOTS": str(REPO), "PYTHONUNBUFFERED": "1"})
    # Each gateway's job database beside its store, never the repository's .fnbundle/.
    env.setdefault("FNB_JOBS_DIR", str(Path(store).parent / f"{Path(store).name}-jobs"))
    env.update(extra)
    return env


def import_llm(store: Path, base: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``fnbundle models import <base> --task generate --name <name>`` into ``store``."""
    imported = subprocess.run(
        [*FNBUNDLE, "models", "import", str(base), "--task", "generate", "--name", name],
        env=fnb_env(store, FNB_DATA_ROOTS=str(base.parent)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    return imported


@contextmanager
def gateway(store: Path, output: list[str] | None = None, **env: str) -> Iterator[str]:
    """Start the gateway, wait until /readyz answers (200 or 503), stop it afterwards.
    Its output is read all along (a full pipe would stall it) into ``output`` if given."""
    port = free_port()
    proc = subprocess.Popen(
        [*FNBUNDLE, "serve", "--port", str(port)],
        env=fnb_env(store, **env),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = [] if output is None else output

    def drain() -> None:
        for line in proc.stdout or []:
            lines.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                reader.join(timeout=5)
                raise RuntimeError(f"gateway exited: {''.join(lines)}")
            try:
                r = httpx.get(f"{url}/readyz", timeout=2)
                if r.status_code == 200 or r.json().get("status") == "failed":
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def served(tiny_trained) -> Iterator[tuple[str, str]]:
    """(base url, model id) of a gateway serving the tiny classifier."""
    settings, result = tiny_trained
    with gateway(settings.store_root) as url:
        yield url, result.model_id
