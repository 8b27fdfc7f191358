"""The SSRF guard: webhooks go only to public addresses unless settings allow private ones.

A URL is checked when an endpoint is created and again at every delivery, where the request is
pinned to the addresses just checked (the URL's host is kept for ``Host`` and TLS SNI), so a DNS
answer that changes between the check and the connection (DNS rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import httpx

from api.errors import ValidationProblem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

MAX_URL_LENGTH = 2048
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeWebhookURLError(ValidationProblem):
    """A webhook URL is malformed or points somewhere the service must not call."""

    code = "webhook_url_forbidden"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen[str(info[4][0]).split("%", 1)[0]] = None  # drop an IPv6 zone id
    return list(seen)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden inside an IPv6 one (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why the service must not connect to ``address``, or None when it may."""
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if allow_private:
        return None
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = refusal_reason(embedded, allow_private=False)
        if inner is not None:
            return inner
    for name in ("loopback", "link_local", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    if not address.is_global:
        return "non-global"
    return None


@dataclass(frozen=True)
class CheckedURL:
    """A webhook URL that passed the guard, with the addresses it was checked against."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    def pinned_request_url(self) -> httpx.URL:
        """The URL with its host replaced by the first checked address (what is actually dialled)."""
        return httpx.URL(self.url).copy_with(host=self.addresses[0])

    def host_header(self) -> str:
        """The ``Host`` header the original URL implies."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_webhook_url(url: str) -> SplitResult:
    """Check a webhook URL's shape: http(s), a host, no credentials, bounded length."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookURLError(f"the URL is longer than {MAX_URL_LENGTH} characters", pointer="/url")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise UnsafeWebhookURLError("the URL must not contain spaces or control characters", pointer="/url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UnsafeWebhookURLError(f"the URL cannot be parsed: {exc}", pointer="/url") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookURLError("the URL must use http or https", pointer="/url")
    if not parts.hostname:
        raise UnsafeWebhookURLError("the URL has no host", pointer="/url")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookURLError("the URL must not carry credentials", pointer="/url")
    return parts


def check_webhook_url(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> CheckedURL:
    """Resolve the URL's host and refuse it unless every address is allowed."""
    parts = parse_webhook_url(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        raw = [str(literal)]
    else:
        try:
            host.encode("idna")
            raw = list(resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise UnsafeWebhookURLError(
                f"the host {host!r} does not resolve ({exc})", pointer="/url"
            ) from None
    if not raw:
        raise UnsafeWebhookURLError(f"the host {host!r} does not resolve", pointer="/url")
    addresses = [ipaddress.ip_address(a) for a in raw]
    # Every answer must pass: a host that resolves to one public and one private address is refused,
    # since the client could be steered to either.
    for address in addresses:
        reason = refusal_reason(address, allow_private=allow_private)
        if reason is not None:
            raise UnsafeWebhookURLError(
                f"the URL's host resolves to {address}, a {reason} address webhooks may not target",
                pointer="/url",
            )
    return CheckedURL(
        url=url, scheme=parts.scheme, host=host, port=port, addresses=tuple(map(str, addresses))
    )
