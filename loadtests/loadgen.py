"""Closed-loop HTTP load generation and server processes for the benchmark harness.

Key rules: the client must steal as little CPU as possible from the server it measures
(both share the same cores), so it speaks minimal HTTP/1.1 over keep-alive sockets on
uvloop instead of a full-featured client, and reports its own CPU use; every server it
starts listens on 127.0.0.1 only and is killed in a ``finally`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvloop

HOST = "127.0.0.1"
POLL_S = 0.01  # seconds between cold-start polls: the timing resolution
IO_TIMEOUT_S = 60.0  # seconds past the run's end before it is declared broken
STOP_GRACE_S = 10.0  # seconds a server gets to exit after SIGTERM


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request_bytes(port: int, path: str, body: dict, headers: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length = 0
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding":
            raise RuntimeError("chunked responses are not expected from /v1/classify")
    return status, await reader.readexactly(length)


def _valid(status: int, body: bytes) -> bool:
    """A 200 with exactly one prediction, one embedding (``data``, OpenAI's shape) or one
    completion choice: what every request here asks for. A bare JSON list of one is one
    prediction too (a BentoML batchable API answers with its slice of the batch)."""
    if status != 200:
        return False
    answer = json.loads(body)
    if isinstance(answer, list):
        return len(answer) == 1
    rows = answer.get("predictions", answer.get("data", answer.get("choices")))
    return isinstance(rows, list) and len(rows) == 1


@dataclass
class LoadResult:
    clients: int
    requests: int  # completed with a valid answer
    errors: int
    wall_s: float  # first send to last answer
    latencies_ms: list[float]
    client_cpu: float  # load generator CPU time / wall time (1.0 = one core)

    @property
    def throughput(self) -> float:  # requests/s = texts/s: one text per request
        return self.requests / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _client(
    port: int, payloads: Sequence[bytes], offset: int, deadline: float, out: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = offset
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(payloads[i % len(payloads)])
            status, body = await _read_response(reader)
            elapsed_ms = (time.perf_counter() - start) * 1000
            if _valid(status, body):
                out.requests += 1
                out.latencies_ms.append(elapsed_ms)
            else:
                out.errors += 1
            i += 1
    finally:
        writer.close()


async def _closed_loop(
    port: int, payloads: Sequence[bytes], clients: int, duration_s: float
) -> LoadResult:
    result = LoadResult(clients, 0, 0, 0.0, [], 0.0)
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration_s
    stride = max(1, len(payloads) // clients)  # clients start at different texts
    clients_done = asyncio.gather(
        *(_client(port, payloads, c * stride, deadline, result) for c in range(clients))
    )
    # one watchdog for the whole run: a per-request timeout would cost a task per request
    await asyncio.wait_for(clients_done, duration_s + IO_TIMEOUT_S)
    result.wall_s = time.perf_counter() - t0
    result.client_cpu = (time.process_time() - cpu0) / result.wall_s
    return result


def closed_loop(
    port: int, payloads: Sequence[bytes], clients: int, duration_s: float
) -> LoadResult:
    """``clients`` connections, each sending its next request as soon as the last returns,
    until ``duration_s`` has passed (requests in flight then are finished and counted)."""
    return uvloop.run(_closed_loop(port, payloads, clients, duration_s))


# --- server processes ---------------------------------------------------------------
def fetch(port: int, payload: bytes) -> dict | list | None:
    """One blocking request; the JSON answer if it is a valid prediction, else None."""
    try:
        with socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S) as s:
            s.sendall(payload)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                body += chunk
            return json.loads(body) if _valid(status, body) else None
    except OSError:
        return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after the grace."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a server that exited


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (servers that fork workers: LitServe, BentoML)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    cold_start_s: float  # process start to first valid prediction
    backend: str  # what the server says answered the first prediction


@contextmanager
def server(
    name: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    probe: bytes,
    log_file: Path,
    timeout_s: float,
    cwd: Path | None = None,
) -> Iterator[Server]:
    """Start ``command`` (in ``cwd`` if given); yield once ``probe`` (a request of the
    kind the run sends) gets a valid answer.

    The time from ``Popen`` to that answer is the cold start: imports, model load,
    warm-up, and the first prediction, polled every ``POLL_S``. The server runs in its
    own process group, so stopping it also stops the workers it started.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            command,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while (answer := fetch(port, probe)) is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_file}")
                if time.perf_counter() - t0 > timeout_s:
                    raise TimeoutError(
                        f"{name} gave no prediction in {timeout_s} s; see {log_file}"
                    )
                time.sleep(POLL_S)
            backend = answer.get("backend", "?") if isinstance(answer, dict) else "?"
            yield Server(name, port, proc, time.perf_counter() - t0, backend)
        finally:
            _stop(proc)
