"""A job on an ``hf:`` base never holds its submit (or other requests) on the Hub.

A real gateway (uvicorn on 127.0.0.1, in a subprocess whose ``HF_ENDPOINT`` is a local fake
Hub) answers submits: an unknown repository or revision is a quick 404 / 400; a Hub that
stalls or fails is a quick 202 with an estimate marked approximate, and ``GET /v1/jobs``
answers while such a submit is being checked. The job manager is never started (lifespan
off), so nothing trains. Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, REVIEWS, free_port

pytestmark = pytest.mark.unit

ANSWER_S = 20  # seconds: a client timeout that only a hang reaches (the Hub stalls for 60)
GATEWAY = """
import sys, uvicorn
from pathlib import Path
from fnbundle.api import create_app
from fnbundle.jobs.manager import JobManager
from fnbundle.settings import Settings
tmp, repo, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
settings = Settings(store=tmp / "store", jobs_dir=tmp / "jobs", data_roots=[repo])
app = create_app(settings, job_manager=JobManager(settings))
uvicorn.run(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
"""


class FakeHub(BaseHTTPRequestHandler):
    """Answers as the Hub does for a missing repository or revision; stalls or fails else."""

    stalled = threading.Event()

    def _answer(self) -> None:
        if "/org/missing/" in self.path:
            self._error(404, "RepoNotFound", "Repository not found")
        elif "/org/norev/" in self.path:
            self._error(404, "RevisionNotFound", "Invalid rev id: v9")
        elif "/org/slow/" in self.path:
            FakeHub.stalled.set()
            time.sleep(60)  # never answers in time
        else:
            self._error(503, None, "Service unavailable")

    def _error(self, status: int, code: str | None, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def fake_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def gateway(tmp: Path, hub_url: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp / "hf"),  # an empty Hub cache
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", GATEWAY, str(tmp), str(REPO), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def submit(url: str, base: str) -> httpx.Response:
    body = {"task": "train_classifier", "params": {"data": str(REVIEWS), "name": "t", "base": base}}
    return httpx.post(f"{url}/v1/jobs", json=body, timeout=ANSWER_S)


def test_hub_answers_and_silences_never_hold_a_submit_or_other_requests(tmp_path):
    with fake_hub() as hub_url, gateway(tmp_path, hub_url) as url:
        missing = submit(url, "hf:org/missing@main")
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["field"] == "base"
        assert "no such repository" in missing.json()["error"]["message"]

        norev = submit(url, "hf:org/norev@v9")
        assert norev.status_code == 400, norev.text
        assert "no revision 'v9'" in norev.json()["error"]["message"]

        down = submit(url, "hf:org/down@main")  # the Hub answers 503
        assert down.status_code == 202, down.text
        assert down.json()["estimate"]["approximate"] is True

        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(submit, url, "hf:org/slow@main")
            assert FakeHub.stalled.wait(ANSWER_S), "the submit never asked the Hub"
            listed = httpx.get(f"{url}/v1/jobs", timeout=ANSWER_S)  # while the submit waits
            assert listed.status_code == 200
            accepted = slow.result()
        assert accepted.status_code == 202, accepted.text
        estimate = accepted.json()["estimate"]
        assert estimate["approximate"] is True and estimate["usd_per_s"] > 0
        assert "did not answer within 3 s" in estimate["assumptions"][0]
        assert "seconds" not in estimate and "usd" not in estimate
        job = httpx.get(f"{url}{accepted.headers['location']}", timeout=ANSWER_S).json()
        assert job["status"] == "queued" and job["params"]["base"] == "hf:org/slow@main"
