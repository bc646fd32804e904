"""Delivery: POST the signed job to its checked address, retried with backoff, at least once."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from fnbundle.webhooks.sent import SentLog
from fnbundle.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign
from fnbundle.webhooks.targets import (
    IPAddress,
    checked_addresses,
    ip_literal,
    parse_target,
)

log = logging.getLogger(__name__)

USER_AGENT = "fnbundle-webhooks/1"


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
    if addresses is None or ip_literal(host) is not None:
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
    parsed = parse_target(url)
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
                addresses = checked_addresses(parsed, allow_private, allowed_hosts)
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
