"""Webhook delivery: signatures, SSRF refusals, retries and dedupe against a real local server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fnbundle.errors import InvalidRequest
from fnbundle.webhooks import (
    MemorySentLog,
    SqliteSentLog,
    check_target,
    deliver,
    sign,
    verify,
)

from tests.conftest import free_port

pytestmark = pytest.mark.unit

SECRET = b"whsec-test"
JOB = {"id": "job_1", "status": "succeeded", "artifact": {"id": "m1"}}
PUBLIC_IP = "93.184.215.14"  # a global address; used as a literal, never contacted


# --- a tiny receiver on 127.0.0.1 ----------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


@dataclass
class Receiver:
    url: str
    replies: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def reply(self, status: int, **headers: str) -> None:
        """Queue one answer; when the queue is empty the receiver answers 200."""
        self.replies.append((status, {k.replace("_", "-"): v for k, v in headers.items()}))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            signature = self.headers.get("Fnbundle-Signature", "")
            state.received.append(
                Received(dict(self.headers), body, verify(SECRET, signature, body))
            )
            status, headers = state.replies.pop(0) if state.replies else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/jobs"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def send(receiver: Receiver, sleeps: list[float] | None = None, **kwargs):
    options = {"secret": SECRET, "event_id": "job_1:succeeded:1", "allow_private": True}
    options.update(kwargs)
    return deliver(
        receiver.url, JOB, sleep=(sleeps if sleeps is not None else []).append, **options
    )


# --- signatures ----------------------------------------------------------------------


def test_signature_round_trip():
    body = json.dumps(JOB).encode()
    header = sign(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, header, body, now=1_700_000_100)


def test_tampered_body_wrong_secret_or_forged_signature_is_rejected():
    body = b'{"status":"succeeded"}'
    header = sign(SECRET, 1_700_000_000, body)
    assert not verify(SECRET, header, b'{"status":"failed"}', now=1_700_000_000)
    assert not verify(b"other-secret", header, body, now=1_700_000_000)
    # Moving the timestamp invalidates the signature, because it is signed too.
    forged = header.replace("t=1700000000", "t=1700000500")
    assert not verify(SECRET, forged, body, now=1_700_000_500)


def test_old_or_future_signature_is_rejected():
    body = b"{}"
    header = sign(SECRET, 1_700_000_000, body)
    assert verify(SECRET, header, body, now=1_700_000_300)
    assert not verify(SECRET, header, body, now=1_700_000_301)
    assert not verify(SECRET, header, body, now=1_699_999_000)
    assert verify(SECRET, header, body, tolerance_s=3600, now=1_700_001_000)


@pytest.mark.parametrize("header", ["", "garbage", "t=abc,v1=00", "t=1700000000", "v1=00"])
def test_malformed_signature_header_is_not_valid(header):
    assert not verify(SECRET, header, b"{}", now=1_700_000_000)


# --- target checks -------------------------------------------------------------------

REFUSED = [
    "http://127.0.0.1/hook",
    "http://[::1]:8080/hook",
    "http://10.1.2.3/hook",
    "https://192.168.1.20/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://localhost:8000/hook",
    "http://0.0.0.0/hook",
    "http://100.64.0.1/hook",  # carrier-grade NAT, inside many clouds
    "http://[fe80::1]/hook",
    "http://224.0.0.1/hook",
    "http://2130706433/hook",  # 127.0.0.1 spelled as one number
    "http://0x7f.1/hook",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_targets_are_refused(url):
    with pytest.raises(InvalidRequest) as info:
        check_target(url)
    assert info.value.field == "webhook_url"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@example.com/hook",
        f"http://token@{PUBLIC_IP}/hook",
        f"ftp://{PUBLIC_IP}/hook",
        "file:///etc/passwd",
        "not a url",
    ],
)
def test_bad_schemes_and_credentials_are_refused_even_when_private_is_allowed(url):
    with pytest.raises(InvalidRequest) as info:
        check_target(url, allow_private=True)
    assert info.value.field == "webhook_url"


def test_public_address_is_accepted():
    check_target(f"https://{PUBLIC_IP}/hook")
    check_target(f"http://[::ffff:{PUBLIC_IP}]/hook")


@pytest.mark.parametrize("url", REFUSED)
def test_allow_private_lifts_the_address_check(url):
    check_target(url, allow_private=True)


def test_allowed_hosts_lifts_the_address_check_for_that_host_only():
    check_target("http://localhost:8000/hook", allowed_hosts=["LOCALHOST"])
    check_target("http://10.1.2.3/hook", allowed_hosts=["10.1.2.3"])
    with pytest.raises(InvalidRequest):
        check_target("http://10.1.2.4/hook", allowed_hosts=["10.1.2.3"])


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """Resolve the given names to the given addresses (tests have no DNS)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port),
            )
            for ip in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_name_with_any_private_address_is_refused(monkeypatch):
    fake_dns(monkeypatch, {"hooks.example": [PUBLIC_IP, "10.0.0.7"]})
    with pytest.raises(InvalidRequest, match="non-public"):
        check_target("https://hooks.example/hook")


def test_unresolvable_host_is_refused_at_submission(monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(InvalidRequest, match="does not resolve"):
        check_target("https://nowhere.example/hook")


def test_target_is_checked_again_at_delivery_time(monkeypatch):
    # DNS rebinding: the name was public when the job was submitted, private later.
    fake_dns(monkeypatch, {"hooks.example": [PUBLIC_IP]})
    check_target("https://hooks.example/hook")
    fake_dns(monkeypatch, {"hooks.example": ["169.254.169.254"]})
    sent: list[httpx.Request] = []
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))
    )
    with pytest.raises(InvalidRequest):
        deliver("https://hooks.example/hook", JOB, secret=SECRET, event_id="e", client=client)
    assert sent == []


def test_request_goes_to_the_checked_address_with_the_name_in_host_and_sni(monkeypatch):
    fake_dns(monkeypatch, {"hooks.example": [PUBLIC_IP]})
    sent: list[httpx.Request] = []
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(204))
    )
    result = deliver(
        "https://hooks.example:8443/hook?k=1", JOB, secret=SECRET, event_id="e", client=client
    )
    assert result.delivered and result.status_code == 204
    (request,) = sent
    assert request.url.host == PUBLIC_IP and request.url.port == 8443
    assert request.url.path == "/hook" and request.url.params["k"] == "1"
    assert request.headers["Host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"


# --- delivery against a real server --------------------------------------------------


def test_delivery_is_signed_and_carries_event_id(receiver):
    result = send(receiver, event_id="job_1:succeeded:1")
    assert result.delivered and result.attempts == 1 and result.status_code == 200
    assert result.error is None
    (got,) = receiver.received
    assert got.signature_ok
    assert json.loads(got.body) == JOB
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Fnbundle-Event-Id"] == "job_1:succeeded:1"


def test_loopback_receiver_is_refused_without_allow_private(receiver):
    with pytest.raises(InvalidRequest):
        send(receiver, allow_private=False)
    assert receiver.received == []


def test_503_is_retried_with_growing_backoff_then_delivered(receiver):
    receiver.reply(503)
    receiver.reply(503)
    sleeps: list[float] = []
    result = send(receiver, sleeps, backoff_s=1.0)
    assert result.delivered and result.attempts == 3 and result.status_code == 200
    assert len(receiver.received) == 3
    assert all(r.signature_ok for r in receiver.received)
    assert {r.headers["Fnbundle-Event-Id"] for r in receiver.received} == {"job_1:succeeded:1"}
    # Exponential with jitter: the n-th wait lies in [backoff * 2**(n-1) / 2, backoff * 2**(n-1)].
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


def test_backoff_is_capped(receiver):
    for _ in range(4):
        receiver.reply(500)
    sleeps: list[float] = []
    send(receiver, sleeps, backoff_s=10.0, max_backoff_s=15.0)
    assert len(sleeps) == 4 and max(sleeps) <= 15.0


def test_retry_after_is_honoured_and_capped(receiver):
    receiver.reply(429, Retry_After="7")
    receiver.reply(503, Retry_After="3600")
    sleeps: list[float] = []
    result = send(receiver, sleeps, max_backoff_s=60)
    assert result.delivered and result.attempts == 3
    assert sleeps == [7.0, 60.0]


def test_client_error_is_not_retried(receiver):
    receiver.reply(400)
    sleeps: list[float] = []
    result = send(receiver, sleeps)
    assert not result.delivered
    assert result.attempts == 1 and result.status_code == 400 and result.error == "HTTP 400"
    assert len(receiver.received) == 1 and sleeps == []


def test_redirect_is_not_followed(receiver):
    receiver.reply(302, Location="http://169.254.169.254/latest/meta-data/")
    result = send(receiver)
    assert not result.delivered and result.status_code == 302
    assert len(receiver.received) == 1


def test_gives_up_after_the_last_attempt_without_raising(receiver):
    for _ in range(3):
        receiver.reply(500)
    sleeps: list[float] = []
    result = send(receiver, sleeps, attempts=3)
    assert not result.delivered
    assert result.attempts == 3 and result.status_code == 500 and result.error == "HTTP 500"
    assert len(receiver.received) == 3 and len(sleeps) == 2  # no wait after the last one


def test_connection_refused_is_retried_and_reported(caplog):
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    sleeps: list[float] = []
    with caplog.at_level("WARNING", logger="fnbundle.webhooks"):
        result = deliver(
            url,
            JOB,
            secret=SECRET,
            event_id="e",
            attempts=2,
            allow_private=True,
            sleep=sleeps.append,
        )
    assert not result.delivered and result.attempts == 2 and result.status_code is None
    assert result.error is not None and "ConnectError" in result.error
    assert len(sleeps) == 1
    assert "failed after 2 attempts" in caplog.text


def test_timeout_is_retried():
    calls: list[httpx.Request] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200)

    client = httpx.Client(transport=httpx.MockTransport(flaky))
    result = deliver(
        f"https://{PUBLIC_IP}/hook",
        JOB,
        secret=SECRET,
        event_id="e",
        sleep=[].append,
        client=client,
    )
    assert result.delivered and result.attempts == 2 and len(calls) == 2


# --- dedupe --------------------------------------------------------------------------


def test_an_event_is_sent_once(receiver):
    sent = MemorySentLog()
    first = send(receiver, sent=sent)
    second = send(receiver, sent=sent)
    assert first.delivered and not first.duplicate
    assert second.delivered and second.duplicate and second.attempts == 0
    assert len(receiver.received) == 1
    # A different event of the same job still goes out.
    send(receiver, sent=sent, event_id="job_1:succeeded:2")
    assert len(receiver.received) == 2


def test_a_failed_event_is_not_marked_sent(receiver):
    receiver.reply(400)
    sent = MemorySentLog()
    assert not send(receiver, sent=sent).delivered
    assert send(receiver, sent=sent).delivered
    assert len(receiver.received) == 2


def test_sqlite_sent_log_persists_across_instances(receiver, tmp_path):
    path = tmp_path / "state" / "webhooks.sqlite"
    assert send(receiver, sent=SqliteSentLog(path)).delivered
    reopened = SqliteSentLog(path)
    assert reopened.seen("job_1:succeeded:1")
    assert not reopened.seen("job_1:failed:1")
    assert send(receiver, sent=reopened).duplicate
    assert len(receiver.received) == 1
