"""Job webhooks (signing, targets, sent log, delivery): POST a finished job to its ``webhook_url``, signed, retried, sent once.

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

from fnbundle.webhooks.delivery import USER_AGENT, DeliveryResult, deliver
from fnbundle.webhooks.sent import MemorySentLog, SentLog, SqliteSentLog
from fnbundle.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign, verify
from fnbundle.webhooks.targets import FIELD, check_target

__all__ = [
    "EVENT_ID_HEADER",
    "FIELD",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "DeliveryResult",
    "MemorySentLog",
    "SentLog",
    "SqliteSentLog",
    "check_target",
    "deliver",
    "sign",
    "verify",
]
