"""What an image string in a request may point at: inline data always; a URL only when its domain is allowed and it
resolves to a public address; a local path never.

Servers that fetch image URLs on the client's behalf become SSRF proxies (vLLM CVE-2025-6242; infinity and
clip-as-service fetch any URL, clip-as-service even opens local paths). Here fetching is off unless the operator names
domains (`--allow-url-domain`), and even then every hop is checked: the host must be an allowed domain (or a
subdomain of one), every address it resolves to must be public (no loopback, private, link-local, multicast, reserved
or unspecified addresses), the connection goes to the address that was checked (no second DNS lookup to rebind),
redirects are followed by hand and each target is checked again, and the size and the total time are capped.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class InputRefused(ValueError):
    """An image string the server will not use (400); the message says why, without echoing the whole input."""


class TooLarge(ValueError):
    """An image larger than the configured byte limit (413)."""


Resolver = Callable[[str, int], Sequence[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputRefused(f"cannot resolve host {host!r} ({exc.strerror})") from None
    return sorted({info[4][0] for info in infos})


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified and IPv4-mapped versions of them."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or not ip.is_global)


@dataclass
class UrlPolicy:
    """Opt-in URL fetching. Empty `allowed_domains` (the default) refuses every URL."""

    allowed_domains: list[str] = field(default_factory=list)
    max_bytes: int = 8 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    resolve: Resolver = system_resolve

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_domains)

    def domain_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in (d.lower().strip(".") for d in self.allowed_domains))

    def check(self, url: str) -> tuple[str, str, int, str]:
        """Checks one hop; returns (scheme, host, port, address to connect to). Raises InputRefused."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise InputRefused(f"URL scheme {scheme!r} is not fetched (only http and https)")
        if parts.username or parts.password:
            raise InputRefused("URLs with credentials are not fetched")
        host = parts.hostname or ""
        if not host:
            raise InputRefused("URL has no host")
        if not self.domain_allowed(host):
            raise InputRefused(f"host {host!r} is not in the allowed domains (--allow-url-domain)")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise InputRefused("URL has an invalid port") from None
        addresses = list(self.resolve(host, port))
        if not addresses:
            raise InputRefused(f"host {host!r} resolves to no address")
        for address in addresses:
            if not is_public(address):
                raise InputRefused(f"host {host!r} resolves to non-public address {address} (loopback, private, "
                                   f"link-local and reserved addresses are never fetched)")
        return scheme, host, port, addresses[0]


def fetch(url: str, policy: UrlPolicy, *, transport=None) -> bytes:
    """Downloads an image from an allowed, public URL, re-checking every redirect; size and time capped.

    Args:
        url: http(s) URL.
        policy: Allowed domains, caps and the resolver.
        transport: httpx transport (tests pass a mock; default: a real connection).

    Raises:
        InputRefused: Refused by the policy, or the download failed.
        TooLarge: Over `policy.max_bytes`.
    """
    import httpx

    deadline = time.monotonic() + policy.timeout_s
    with httpx.Client(transport=transport, follow_redirects=False, trust_env=False) as client:
        for _hop in range(policy.max_redirects + 1):
            scheme, host, port, address = policy.check(url)
            parts = urlsplit(url)
            # Connect to the address that was checked (no second lookup a DNS rebinding could answer differently);
            # Host header and TLS SNI / certificate check keep the original name.
            netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            target = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InputRefused(f"fetching took longer than {policy.timeout_s:g} s")
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            try:
                with client.stream("GET", target, headers=headers, timeout=remaining,
                                   extensions={"sni_hostname": host}) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise InputRefused(f"redirect without a Location from {host}")
                        url = urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise InputRefused(f"fetching {host} returned HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                        raise TooLarge(f"image at {host} is {declared} bytes, over the limit of {policy.max_bytes}")
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > policy.max_bytes:
                            raise TooLarge(f"image at {host} is over the limit of {policy.max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise InputRefused(f"fetching took longer than {policy.timeout_s:g} s")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise InputRefused(f"fetching {host} failed ({type(exc).__name__})") from None
        raise InputRefused(f"more than {policy.max_redirects} redirects")


def image_bytes(value: str, *, max_bytes: int, policy: UrlPolicy | None = None, transport=None) -> bytes:
    """The encoded image a request string stands for. Data URIs and bare base64 are decoded; http(s) URLs are
    fetched only under an enabled `policy`; anything else (file paths, file:// URLs) is refused. Local files are
    never opened: the decoder only ever sees the bytes returned here.

    Raises:
        InputRefused: Not inline image data, or a refused URL.
        TooLarge: Decoded or fetched size over `max_bytes`.
    """
    if not value:
        raise InputRefused("empty string (expected a data URI or base64 image)")
    match = _DATA_URI.match(value)
    if match:
        if not match.group("b64"):
            raise InputRefused("data URI is not base64-encoded (expected data:image/...;base64,...)")
        return _b64(value[match.end():], max_bytes)
    if _URL.match(value):
        scheme = value.split(":", 1)[0].lower()
        if scheme in ("http", "https"):
            if policy is None or not policy.enabled:
                raise InputRefused("image URLs are not fetched by this server (send a data URI or base64; the "
                                   "operator can allow domains with --allow-url-domain)")
            return fetch(value, policy, transport=transport)
        raise InputRefused(f"{scheme}:// inputs are refused (send a data URI or base64; local files are never read)")
    try:
        return _b64(value, max_bytes)
    except InputRefused:
        if _looks_like_path(value):
            raise InputRefused("file paths are refused (local files are never read; send a data URI or base64)") \
                from None
        raise


def _looks_like_path(value: str) -> bool:
    head = value[:4096]
    return (head.startswith(("/", "./", "../", "~", "\\")) or re.match(r"^[a-zA-Z]:[\\/]", head) is not None
            or ("/" in head and "." in head))


def _b64(payload: str, max_bytes: int) -> bytes:
    payload = payload.strip()
    if len(payload) // 4 * 3 > max_bytes + 3:  # checked before decoding, so a huge string is not decoded at all
        raise TooLarge(f"image is about {len(payload) // 4 * 3} bytes, over the limit of {max_bytes}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        try:  # URL-safe alphabet, as some clients send
            data = base64.b64decode(payload, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise InputRefused("not a data URI or valid base64 image") from None
    if len(data) > max_bytes:
        raise TooLarge(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    if not data:
        raise InputRefused("empty image (no bytes after base64 decoding)")
    return data
