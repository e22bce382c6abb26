"""Where webhooks may go: http(s) URLs whose host resolves to public addresses only.

A URL that resolves to a loopback, private, link-local (cloud metadata at 169.254.169.254
among them), shared, reserved or multicast address is refused, unless its host is listed
in ``WEBHOOK_ALLOWED_HOSTS``. The check runs when a URL is submitted and again before
every delivery (DNS can change in between), and the delivery connects to the address the
check approved, so a name cannot re-resolve elsewhere between the check and the connect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
"""Cloud metadata services (AWS, AWS IPv6, Alibaba, ECS task credentials), named so that
the refusal says what they are; each is outside the public ranges anyway."""

Resolver = Callable[[str, int], Sequence[str]]


class RefusedDestination(ValueError):
    """The URL is malformed or may not be called; the message says why."""


@dataclass(frozen=True)
class Destination:
    """A checked URL and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query, what the request line carries
    address: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be called, or None for a public address."""
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for name in ("loopback", "unspecified", "link_local", "private", "multicast", "reserved"):
        if getattr(address, f"is_{name}"):
            return f"a {name.replace('_', '-')} address"
    if not address.is_global:
        return "not a public address"
    return None


def parse(url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and target of an http(s) URL; raises RefusedDestination."""
    if len(url) > MAX_URL_LENGTH:
        raise RefusedDestination(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedDestination(f"the URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedDestination(f"the URL must start with https:// or http://, got {url[:40]!r}")
    if not parts.hostname:
        raise RefusedDestination("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedDestination("the URL must not carry a user name or password")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (
        parts.scheme,
        parts.hostname.lower(),
        port or (443 if parts.scheme == "https" else 80),
        target,
    )


def check(
    url: str, allowed_hosts: Sequence[str] = (), resolve: Resolver = system_resolver
) -> Destination:
    """Check ``url`` and pick the address to connect to.

    Raises:
        RefusedDestination: malformed, not http(s), unresolvable, or one of its addresses
            is not public and its host is not in ``allowed_hosts``.
    """
    scheme, host, port, target = parse(url)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = list(resolve(host, port))
        except (OSError, UnicodeError) as exc:
            raise RefusedDestination(f"the host {host!r} does not resolve: {exc}") from None
        if not addresses:
            raise RefusedDestination(f"the host {host!r} does not resolve") from None
    if host not in allowed_hosts:
        for address in addresses:
            why = refusal(ipaddress.ip_address(address.split("%", 1)[0]))
            if why is not None:
                raise RefusedDestination(
                    f"the host {host!r} resolves to {address}, {why}; webhooks go to public "
                    "addresses only (an operator may list the host in WEBHOOK_ALLOWED_HOSTS)"
                )
    return Destination(url, scheme, host, port, target, addresses[0])
