"""The HTTP/SSE client of a gateway's ``/v1/jobs``, used by ``fnbundle jobs``.

Key rule: it talks HTTP only, never to the job database, so it drives a local gateway and
a remote one alike; every failure becomes one line and an exit, and an event stream that
drops is resumed with ``Last-Event-ID`` so no event is lost or repeated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import typer

from fnbundle.cli.output import fail

DEFAULT_URL = "http://127.0.0.1:8000"
HTTP_TIMEOUT_S = 30.0  # seconds for one request to the gateway
STREAM_READ_S = 60.0  # seconds of silence before an event stream counts as dead (pings: 15)
RECONNECTS = 5  # tries to resume a dropped event stream, 1, 2, 4... seconds apart


class Gateway:
    """A small HTTP client of ``/v1/jobs``; every failure becomes one line and an exit."""

    def __init__(self, url: str, api_key: str | None):
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_S)

    def unreachable(self, exc: Exception) -> typer.Exit:
        return fail(
            f"cannot reach the gateway at {self.url} ({exc or type(exc).__name__}); is "
            "`fnbundle serve` running there? Point --url or FNB_URL at it."
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise fail(api_error(response))
        return response.json()

    def events(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Every event after ``after``, live, until the terminal state. A stream that ends
        or breaks without it is resumed with ``Last-Event-ID``, so no event is lost or
        repeated: at once after the server's planned end (its ``retry:``), with backoff after
        a failure."""
        import time

        import httpx

        from fnbundle.jobs.schema import TERMINAL

        timeout = httpx.Timeout(HTTP_TIMEOUT_S, read=STREAM_READ_S)
        failures, connected = 0, False
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            retry_ms: list[int] = []  # the server's reconnect delay, when it sent one
            try:
                with self.http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise fail(api_error(response))
                    connected = True
                    for event in sse_events(response.iter_lines(), retry_ms.append):
                        failures = 0
                        after = event["seq"]
                        yield event
                        if event["type"] == "state" and event["data"].get("status") in TERMINAL:
                            return
                if retry_ms:  # the server's planned end (its stream time limit): resume
                    time.sleep(retry_ms[-1] / 1000)
                    continue
                problem: Exception = ConnectionError("the stream ended before the job did")
            except httpx.TransportError as exc:
                problem = exc
            failures += 1  # a restarting gateway, a dropped connection: resume where it stopped
            if failures > RECONNECTS or not connected:
                raise self.unreachable(problem) from None
            time.sleep(2 ** (failures - 1))


def api_error(response: Any) -> str:
    """The gateway's ``{"error": {...}}`` as one line, with the option to fix named."""
    try:
        error = response.json()["error"]
        message, field = str(error["message"]), error.get("field")
    except (ValueError, KeyError, TypeError):
        return f"the gateway answered {response.status_code}: {response.text[:200]}"
    if field and message.startswith(f"{field}: "):
        option = field.removeprefix("params.").replace("_", "-")
        message = f"--{option}: {message.removeprefix(f'{field}: ')}"
    if response.status_code == 401:
        message += " Pass --api-key or set FNB_API_KEY."
    if response.headers.get("retry-after"):
        message += f" Try again in {response.headers['retry-after']} s."
    return message


def sse_events(
    lines: Iterable[str], on_retry: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Parse ``text/event-stream`` lines into JobEvent dicts (pings and comments skipped);
    a ``retry:`` field (milliseconds before reconnecting) goes to ``on_retry``."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("retry:") and on_retry is not None:
            value = line[6:].strip()
            if value.isdigit():
                on_retry(int(value))
    if data:
        yield json.loads("\n".join(data))
