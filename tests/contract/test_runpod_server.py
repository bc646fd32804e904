"""The classify worker behind the RunPod SDK's dev server (``--rp_serve_api``), called with
the SDK's own ``runpod.Endpoint`` client: every case's body equals the gateway's.

The server is a real subprocess on 127.0.0.1, started once for the module and always
stopped (its whole process group) when the module's tests end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import runpod

from tests.conftest import REPO, free_port
from tests.contract.cases import CASES, MODEL, Case, normalize
from tests.contract.test_runpod import decode, worker_env

pytestmark = pytest.mark.contract

START_TIMEOUT_S = 120  # import, load the model, bind: on two busy cores
JOB_TIMEOUT_S = 60  # one /runsync call
STOP_TIMEOUT_S = 15  # SIGTERM grace before SIGKILL


def fnb_worker_env(**fnb: str) -> dict[str, str]:
    """A worker's environment: this one's, with only the given ``FNB_*`` variables (and
    the thread cap of this test process, tests/conftest.py)."""
    env = {k: v for k, v in worker_env().items() if not k.startswith("FNB_") or k == "FNB_THREADS"}
    return {**env, **fnb}


@contextmanager
def dev_server(handler: str, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """Run ``handlers/<handler>.py``'s dev server on a free 127.0.0.1 port; yield its base URL."""
    port = free_port()
    command = [sys.executable, str(REPO / "handlers" / f"{handler}.py"), "--rp_serve_api"]
    command += ["--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    base = f"http://127.0.0.1:{port}"
    # A file, not a pipe: the SDK logs every job, and a full pipe would stall the server.
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if server.poll() is not None:
                    output = log_path.read_text(errors="replace")
                    raise RuntimeError(f"dev server exited with {server.returncode}:\n{output}")
                try:
                    # The docs page answers once uvicorn runs: after setup() loaded the model.
                    if httpx.get(f"{base}/", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dev server not up on {base} after {START_TIMEOUT_S} s")
                time.sleep(0.3)
            yield base
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


@pytest.fixture(scope="module")
def endpoint(tiny_trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[runpod.Endpoint]:
    """A ``runpod.Endpoint`` whose calls reach the dev server serving the tiny store."""
    settings, _result = tiny_trained
    log_path = tmp_path_factory.mktemp("runpod-dev-server") / "server.log"
    env = fnb_worker_env(
        FNB_STORE=str(settings.store_root),
        FNB_DATA_ROOTS=",".join(str(root) for root in settings.data_roots),
        FNB_PRELOAD=MODEL,
    )
    with dev_server("classify", env, log_path) as base:
        # The SDK builds {endpoint_url_base}/{endpoint_id}/runsync; the dev server serves
        # /runsync at its root, and "." is a path segment URL normalisation removes.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runpod, "endpoint_url_base", base)
            client = runpod.Endpoint(".", api_key="local-dev-server")  # reads the base now
        yield client


def runsync(endpoint: runpod.Endpoint, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(job status, body) of one /runsync call through the SDK's HTTP client.

    ``Endpoint.run_sync`` returns only a job's output, and a failed job has none; the
    error a RunPod caller reads sits next to the status in the raw answer.
    """
    answer = endpoint.rp_client.post(
        f"{endpoint.endpoint_id}/runsync", {"input": payload}, timeout=JOB_TIMEOUT_S
    )
    if answer["status"] == "COMPLETED":
        return answer["status"], answer["output"]
    return answer["status"], decode({"error": answer["error"]})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_dev_server_matches_gateway(case: Case, endpoint: runpod.Endpoint, gateway) -> None:
    job_status, body = runsync(endpoint, case.payload)
    answer = gateway.post("/v1/classify", json=case.payload)
    assert answer.status_code == case.status
    assert normalize(body) == normalize(answer.json())
    assert job_status == ("COMPLETED" if case.status == 200 else "FAILED")


@pytest.mark.parametrize("name", ["good", "one_text"])
def test_run_sync_returns_the_gateway_body(name: str, endpoint: runpod.Endpoint, gateway) -> None:
    payload = next(case.payload for case in CASES if case.name == name)
    output = endpoint.run_sync({"input": payload}, timeout=JOB_TIMEOUT_S)
    assert normalize(output) == normalize(gateway.post("/v1/classify", json=payload).json())
