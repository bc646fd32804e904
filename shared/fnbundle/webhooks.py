"""Job webhooks: POST a finished job to its ``webhook_url``, signed, retried, sent once.

When a training job reaches a terminal state the jobs runtime calls :func:`deliver` with
the job as a JSON-ready dict (``job.model_dump(mode="json")``). Every request carries:

* ``Content-Type: application/json``;
* ``Fnbundle-Event-Id``: stable for one event (``f"{job_id}:{status}:{attempt}"``), the
  same on every retry, so a receiver can drop duplicates;
* ``Fnbundle-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 with the shared secret
  over ``f"{t}.".encode() + body``. The timestamp is part of the signed bytes, so a
  captured request cannot be replayed once it is older than the receiver's tolerance.

A receiver verifies the raw body before parsing it::

    import hashlib, hmac, time

    def verify(secret: bytes, header: str, body: bytes, tolerance_s: int = 300) -> bool:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
        expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - t) <= tolerance_s
        return fresh and hmac.compare_digest(expected, parts["v1"])

and answers 2xx quickly; a repeated ``Fnbundle-Event-Id`` should be acknowledged and ignored.

Key rules:

* The target must not reach inside our network (SSRF). Only ``http``/``https``, no
  credentials in the URL, and every address the host resolves to must be public: private,
  loopback, link-local (the 169.254.169.254 metadata service), multicast, reserved,
  unspecified and shared (100.64/10) addresses are refused, also when wrapped in IPv6
  (``::ffff:10.0.0.1``, 6to4). :func:`check_target` runs when the job is submitted and again
  before every attempt, because DNS can change; the request then goes to the address that
  was checked (the host name stays in ``Host`` and TLS SNI), so a second DNS answer cannot
  slip in between check and connect. Redirects are never followed, and the client this
  module creates ignores proxies from the environment.
* Delivery is at least once. Connection errors, timeouts, 408, 429 and 5xx are retried
  with exponential backoff and jitter (``Retry-After`` wins when given, capped at
  ``max_backoff_s``); a 2xx delivers; any other answer is a permanent failure. An event id
  already in the :class:`SentLog` is not sent again.
* :func:`deliver` never raises for network failures: it logs a warning and returns a
  :class:`DeliveryResult`. It raises :class:`~fnbundle.errors.InvalidRequest` only for a
  refused target.

Settings: this module reads none; the caller passes them. The jobs runtime maps
``FNB_WEBHOOK_SECRET`` to ``secret`` (``.encode()``), ``FNB_WEBHOOK_ALLOW_PRIVATE`` to
``allow_private`` (only for local development and tests) and ``FNB_WEBHOOK_ALLOWED_HOSTS``
(comma-separated host names, e.g. an internal receiver) to ``allowed_hosts``, and gives
a :class:`SqliteSentLog` in the store folder as ``sent``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from fnbundle.errors import InvalidRequest

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Fnbundle-Signature"
EVENT_ID_HEADER = "Fnbundle-Event-Id"
USER_AGENT = "fnbundle-webhooks/1"
FIELD = "webhook_url"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- signing -------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Fnbundle-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: bytes,
    header_value: str,
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True when ``header_value`` signs ``body`` with ``secret`` and is at most
    ``tolerance_s`` seconds old (or early). Malformed headers are simply not valid."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header_value.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    # Check every v1 so a sender rotating secrets can send two; compare in constant time.
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# --- target checks (SSRF) ------------------------------------------------------------


def _is_forbidden(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_forbidden(ip.ipv4_mapped)
        if ip.sixtofour is not None and _is_forbidden(ip.sixtofour):
            return True
        if ip.is_site_local:
            return True
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _parse(url: str) -> httpx.URL:
    """Parse with the same parser that sends the request, so both see the same host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidRequest(f"Webhook URL is not a valid URL: {exc}", field=FIELD) from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidRequest("Webhook URL must use http or https.", field=FIELD)
    if parsed.userinfo:
        raise InvalidRequest("Webhook URL must not contain credentials.", field=FIELD)
    if not parsed.host:
        raise InvalidRequest("Webhook URL has no host.", field=FIELD)
    return parsed


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to; raises ``OSError`` when it does not resolve."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        # Drop an IPv6 scope ("fe80::1%eth0"); the address alone decides.
        ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    return addresses


def _checked_addresses(
    url: httpx.URL, allow_private: bool, allowed_hosts: Collection[str]
) -> list[IPAddress] | None:
    """The public addresses to connect to, or None when the policy does not apply.

    Raises InvalidRequest for a refused address and OSError when the host does not resolve.
    """
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    names = {host, url.host.lower().rstrip(".")}  # punycode and unicode spellings
    if allow_private or names & {h.strip().lower().rstrip(".") for h in allowed_hosts}:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = _resolve(host, port)
    refused = [ip for ip in addresses if _is_forbidden(ip)]
    if refused:
        # One bad answer refuses the host: otherwise a name with a public and a private
        # address would work or not depending on which one a resolver lists first.
        raise InvalidRequest(
            f"Webhook host {host!r} resolves to a non-public address ({refused[0]}).",
            field=FIELD,
        )
    return addresses


def check_target(
    url: str, allow_private: bool = False, allowed_hosts: Collection[str] = ()
) -> None:
    """Refuse, with InvalidRequest(field="webhook_url"), a URL a webhook must not reach.

    ``allow_private`` and ``allowed_hosts`` lift the address check (scheme and credential
    rules still hold). A host that does not resolve is refused too.
    """
    parsed = _parse(url)
    try:
        _checked_addresses(parsed, allow_private, allowed_hosts)
    except OSError as exc:
        raise InvalidRequest(
            f"Webhook host {parsed.host!r} does not resolve: {exc}", field=FIELD
        ) from exc


# --- sent log (dedupe) ---------------------------------------------------------------


class SentLog(Protocol):
    """Remembers which event ids were delivered, so an event is sent once."""

    def seen(self, event_id: str) -> bool: ...

    def mark(self, event_id: str) -> None: ...


class MemorySentLog:
    """A sent log for one process (tests, the local runtime)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def seen(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._ids

    def mark(self, event_id: str) -> None:
        with self._lock:
            self._ids.add(event_id)


class SqliteSentLog:
    """A sent log in a SQLite file that survives restarts (``webhook_deliveries`` table).

    One connection per call, so instances can be shared across threads and processes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS webhook_deliveries ("
                "event_id TEXT PRIMARY KEY, delivered_at TEXT NOT NULL)"
            )

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=30, isolation_level=None))

    def seen(self, event_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE event_id = ?", (event_id,)
            ).fetchone()
        return row is not None

    def mark(self, event_id: str) -> None:
        now = datetime.now(UTC).isoformat()
        with self._connect() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (event_id, delivered_at) VALUES (?, ?)",
                (event_id, now),
            )


# --- delivery ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one event. ``duplicate`` means it was already sent: nothing went out."""

    delivered: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None
    duplicate: bool = False


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _backoff(attempt: int, backoff_s: float, max_backoff_s: float) -> float:
    """Exponential backoff with jitter in [half, full], so many senders do not retry in step."""
    ceiling = min(max_backoff_s, backoff_s * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _request_parts(
    url: httpx.URL, addresses: list[IPAddress] | None
) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """Aim the request at the checked address; the name stays in ``Host`` and TLS SNI."""
    host = url.raw_host.decode("ascii")
    if addresses is None or _ip_literal(host) is not None:
        return url, {}, {}
    extensions: dict[str, Any] = {}
    if url.scheme == "https":
        # The certificate is still checked against the host name, not the address.
        extensions["sni_hostname"] = host
    headers = {"Host": url.netloc.decode("ascii")}
    return url.copy_with(host=str(addresses[0])), headers, extensions


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    secret: bytes,
    event_id: str,
    attempts: int = 5,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60,
    timeout_s: float = 10,
    allow_private: bool = False,
    allowed_hosts: Collection[str] = (),
    sent: SentLog | None = None,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
) -> DeliveryResult:
    """POST ``payload`` to ``url`` as one signed event; retry transient failures.

    ``attempts`` counts requests, the first included. ``sleep`` and ``client`` are there
    so a caller (or a test) can supply its own. Raises InvalidRequest only when the target
    is refused, which may happen on a later attempt if DNS changes.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    parsed = _parse(url)
    if sent is not None and sent.seen(event_id):
        log.info("webhook %s already delivered; not sending again", event_id)
        return DeliveryResult(delivered=True, attempts=0, duplicate=True)

    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    own_client = client is None
    http = client or httpx.Client(trust_env=False, follow_redirects=False)
    where = f"{parsed.scheme}://{parsed.host}"  # never log the path or query: they may hold tokens
    status_code: int | None = None
    error: str | None = None
    try:
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            try:
                addresses = _checked_addresses(parsed, allow_private, allowed_hosts)
                target, headers, extensions = _request_parts(parsed, addresses)
                timestamp = int(time.time())
                headers |= {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    EVENT_ID_HEADER: event_id,
                    SIGNATURE_HEADER: sign(secret, timestamp, body),
                }
                # Stream, and never read the body: a receiver cannot make us buffer much.
                with http.stream(
                    "POST",
                    target,
                    content=body,
                    headers=headers,
                    timeout=timeout_s,
                    follow_redirects=False,
                    extensions=extensions,
                ) as response:
                    status_code = response.status_code
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except (httpx.HTTPError, OSError) as exc:
                status_code = None
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if 200 <= status_code < 300:
                    if sent is not None:
                        sent.mark(event_id)
                    log.info("webhook %s delivered to %s (%d)", event_id, where, status_code)
                    return DeliveryResult(True, attempt, status_code)
                error = f"HTTP {status_code}"
                if not _retryable(status_code):
                    log.warning(
                        "webhook %s to %s refused with %s; not retrying", event_id, where, error
                    )
                    return DeliveryResult(False, attempt, status_code, error)
                if retry_after is not None:
                    wait = min(retry_after, max_backoff_s)
            if attempt < attempts:
                if wait is None:
                    wait = _backoff(attempt, backoff_s, max_backoff_s)
                log.info(
                    "webhook %s to %s failed (%s); retry in %.1fs", event_id, where, error, wait
                )
                sleep(wait)
    finally:
        if own_client:
            http.close()
    log.warning("webhook %s to %s failed after %d attempts: %s", event_id, where, attempts, error)
    return DeliveryResult(False, attempts, status_code, error)
