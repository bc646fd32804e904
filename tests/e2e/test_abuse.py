"""The gateway under abuse, over raw sockets: what slow, oversized and numerous clients
get, and what happens to requests already inside when the gateway is told to stop.

Limits are set small through FNB_* so each case takes a second or two.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.e2e.conftest import FNBUNDLE, START_TIMEOUT, fnb_env, gateway

pytestmark = pytest.mark.e2e

TIMEOUT_S = 1.0  # FNB_REQUEST_TIMEOUT_S in these tests (seconds)
WAIT_S = 20.0  # seconds a socket read may block before the test gives up on an answer
LIMITS = {
    "FNB_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
    "FNB_MAX_HEADER_BYTES": "4096",
    "FNB_MAX_CONNECTIONS": "8",
}
KEY = "abuse-test-key-0123456789"
TEXT = "Fantastic service, the courier was early and friendly."


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[str]:
    """A gateway with an empty store (it starts at once) and small limits."""
    with gateway(tmp_path_factory.mktemp("abuse-store"), **LIMITS) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer: (status, headers, body); the body by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed(sock: socket.socket) -> bool:
    """The server closed the connection (an orderly close or a reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def error_type(body: bytes) -> str:
    return json.loads(body)["error"]["type"]


def request(path: str, body: bytes = b"", method: str = "GET", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def test_oversized_headers_get_431_and_the_server_keeps_going(limited):
    with connect(limited) as sock:
        sock.sendall(request("/healthz", extra="X-Fine: " + "a" * 3000 + "\r\n"))
        assert read_answer(sock)[0] == 200  # under the limit: served
    with connect(limited) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: ")
        answer = None
        for _ in range(32 * 1024):  # up to 32 MiB, 1 KiB at a time, until the server answers
            if select.select([sock], [], [], 0)[0]:
                answer = read_answer(sock)
                break
            try:
                sock.sendall(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):  # it answered while we sent
                answer = read_answer(sock)
                break
        assert answer is not None, "the server took the header without answering"
        status, headers, body = answer
        assert status == 431 and error_type(body) == "headers_too_large"
        assert "4096 bytes" in json.loads(body)["error"]["message"]
        assert headers["connection"] == "close" and closed(sock)
    assert httpx.get(f"{limited}/healthz").status_code == 200


def test_slow_headers_get_408_and_are_disconnected(limited):
    socks = [connect(limited) for _ in range(6)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        start = time.monotonic()
        while time.monotonic() - start < 3 * TIMEOUT_S:  # a header line now and then
            for sock in socks:
                with suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"X-Drip: 1\r\n")
            time.sleep(0.2)
        for sock in socks:
            status, _, body = read_answer(sock)
            assert status == 408 and error_type(body) == "request_timeout"
            assert closed(sock)
    finally:
        for sock in socks:
            sock.close()


def test_a_silent_connection_is_closed(limited):
    with connect(limited) as sock:  # connects and never sends a byte
        status, _, body = read_answer(sock)
        assert status == 408 and error_type(body) == "request_timeout" and closed(sock)


@pytest.mark.parametrize("body_sent", [b"", b'{"model": "tiny", "te'])
def test_a_body_shorter_than_its_content_length_gets_408(limited, body_sent):
    with connect(limited) as sock:
        head = b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 100\r\n\r\n" + body_sent)
        status, headers, body = read_answer(sock)
        assert status == 408 and error_type(body) == "request_timeout"
        assert headers["connection"] == "close" and closed(sock)


def test_connections_beyond_the_limit_get_503_in_the_error_shape(limited):
    idle = [connect(limited) for _ in range(8)]  # the limit, held by clients saying nothing
    try:
        time.sleep(0.2)  # let the server accept them all
        with connect(limited) as sock:
            sock.sendall(request("/healthz"))
            status, headers, body = read_answer(sock)
            assert status == 503 and error_type(body) == "unavailable"
            assert headers["retry-after"] and headers["connection"] == "close"
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + WAIT_S
    while httpx.get(f"{limited}/healthz").status_code != 200:  # the slots come back
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_bad_requests_are_answered_in_the_error_shape(limited):
    with connect(limited) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        status, _, body = read_answer(sock)
        assert status == 400 and error_type(body) == "invalid_request"


def test_two_authorization_headers_are_refused(tmp_path):
    with gateway(tmp_path / "store", FNB_API_KEYS=KEY) as url:
        right = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/v1/models", headers=right).status_code == 200
        both = [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {KEY}")]
        r = httpx.get(f"{url}/v1/models", headers=both)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"


@pytest.mark.parametrize("keys", ['""', "short-key"])
def test_the_gateway_refuses_to_start_with_short_keys(tmp_path, keys):
    proc = subprocess.run(
        [*FNBUNDLE, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=fnb_env(tmp_path / "store", FNB_API_KEYS=keys, COLUMNS="200"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "FNB_API_KEYS" in proc.stderr and "shorter than 16 characters" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# --- shutdown ------------------------------------------------------------------------------
@contextmanager
def serving(store: Path, output: list[str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """`fnbundle serve` whose process the test signals itself."""
    port = free_port()
    proc = subprocess.Popen(
        [*FNBUNDLE, "serve", "--port", str(port)],
        env=fnb_env(store, FNB_REQUEST_TIMEOUT_S="30"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, "".join(output)
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_sigterm_lets_requests_inside_finish_and_refuses_new_ones(tiny_trained):
    """60 classify requests are inside (headers read, body still coming) when SIGTERM
    arrives; a kept-alive connection then sends a new request. The 60 answer 200, the new
    one 503, and the process exits by itself."""
    settings, result = tiny_trained
    output: list[str] = []
    body = json.dumps({"model": "tiny", "texts": [TEXT]}).encode()
    half = len(body) // 2  # bytes of the body held back until after the signal
    with serving(settings.store_root, output) as (proc, url):
        inside = [connect(url) for _ in range(60)]
        for sock in inside:
            sock.sendall(request("/v1/classify", body, "POST")[:-half])
        keep_alive = connect(url)
        keep_alive.sendall(request("/healthz"))
        assert read_answer(keep_alive)[0] == 200
        time.sleep(0.5)  # every request is inside, waiting for the rest of its body

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WAIT_S
        while not any("Shutting down" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.05)
        keep_alive.sendall(request("/healthz"))
        status, headers, refused = read_answer(keep_alive)
        assert status == 503 and error_type(refused) == "unavailable"
        assert headers["connection"] == "close" and closed(keep_alive)
        with pytest.raises(OSError):  # no new connections either
            connect(url).close()

        for sock in inside:
            sock.sendall(body[-half:])
        answers = [read_answer(sock) for sock in inside]
        assert [status for status, _, _ in answers] == [200] * 60
        assert all(json.loads(b)["model"] == result.model_id for _, _, b in answers)
        for sock in inside:
            sock.close()
        # uvicorn ends by re-raising the signal it caught, so the exit reads as SIGTERM.
        assert proc.wait(timeout=WAIT_S) in (0, -signal.SIGTERM), "".join(output)
    assert "Finished server process" in "".join(output)
