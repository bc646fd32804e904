"""Webhook signatures: ``t=<unix seconds>,v1=<HMAC-SHA256 hex>`` over ``f"{t}.".encode() + body``."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Fnbundle-Signature"
EVENT_ID_HEADER = "Fnbundle-Event-Id"


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
