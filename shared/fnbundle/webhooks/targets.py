"""Webhook targets: only public addresses, checked at submission and again before every attempt (SSRF)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

import httpx

from fnbundle.errors import InvalidRequest

FIELD = "webhook_url"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def parse_target(url: str) -> httpx.URL:
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


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to; raises ``OSError`` when it does not resolve."""
    literal = ip_literal(host)
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


def checked_addresses(
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
    parsed = parse_target(url)
    try:
        checked_addresses(parsed, allow_private, allowed_hosts)
    except OSError as exc:
        raise InvalidRequest(
            f"Webhook host {parsed.host!r} does not resolve: {exc}", field=FIELD
        ) from exc
