"""Egress safety: a partner URL must never reach our own network.

A partner controls its URL and its DNS, so the relay decides where a request goes only after
resolving the host itself:

* a URL with a literal forbidden address, or plain ``http`` where no allow-listed address
  could be reached, is refused at registration already;
* every address the host resolves to is checked, in its unwrapped form (IPv4-mapped, IPv4-
  compatible, NAT64 and 6to4 addresses carry an IPv4 address that is what really gets routed);
  one forbidden address refuses the whole host, since mixed answers are how rebinding starts;
* the request then goes to the checked address itself, with the original ``Host`` header and
  TLS server name, so a second DNS answer cannot send it elsewhere;
* redirects are never followed, one deadline covers resolution, connect, upload and the whole
  response, and only a capped number of response bytes is read.

``https`` is required, except for addresses on an explicit allow-list (the tests and the demo
allow ``127.0.0.1``); allow-listed addresses are also exempt from the address checks.
"""

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from . import constants
from .errors import EgressRefused

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: host, port -> the addresses the host resolves to (injectable so tests can play DNS).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class _RedactURLs(logging.Filter):
    """httpx logs every request's full URL at INFO; partner URLs may carry credentials or
    tokens in the query, which must never reach a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(a) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


_httpx_logger = logging.getLogger("httpx")
if not any(isinstance(f, _RedactURLs) for f in _httpx_logger.filters):
    _httpx_logger.addFilter(_RedactURLs())


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the operating system (``getaddrinfo``), as a socket connect would."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why the relay must not connect to ``ip``, or ``None`` when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            return None if reason is None else f"embedded_{reason}"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        # fec0::/10: deprecated (RFC 3879) but still routed inside some networks, and
        # Python counts it as global.
        return "site_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "cgnat"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def redact_url(url: str | httpx.URL) -> str:
    """``scheme://host:port/path`` only: no credentials, no query (which often holds tokens)."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    port = f":{u.port}" if u.port else ""
    host = f"[{u.host}]" if ":" in u.host else u.host
    return f"{u.scheme}://{host}{port}{u.path}"


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Where the relay may send requests.

    :param allow: networks exempt from the address checks and allowed over plain ``http``.
    """

    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, allow: Iterable[str]) -> "EgressPolicy":
        """Build from ``["127.0.0.1", "10.1.0.0/16"]``.

        :raises ValueError: an entry that is not an address or network, naming it.
        """
        nets = []
        for entry in allow:
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as e:
                raise ValueError(f'egress allow-list entry is not a network: "{entry}"') from e
        return cls(tuple(nets))

    def allowed(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is on the explicit allow-list."""
        return any(ip in net for net in self.allow)

    def check_url(self, url: str) -> httpx.URL:
        """Static checks before any resolution: an absolute http(s) URL with a host.

        :raises EgressRefused: ``bad_url``.
        """
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as e:
            raise EgressRefused("partner URL is not a valid URL", reason="bad_url") from e
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise EgressRefused(
                f"partner URL must be http(s) with a host: {redact_url(parsed)}", reason="bad_url"
            )
        return parsed

    def check_registration(self, url: str) -> httpx.URL:
        """What can be refused before any resolution, so a URL that can never be delivered to
        is refused at registration: :meth:`check_url`, a length cap, a literal address that is
        forbidden, and plain ``http`` that can never reach an allow-listed address. Host names
        are resolved and checked at each delivery.

        :raises EgressRefused: ``bad_url``, ``forbidden_address`` or ``https_required``.
        """
        if len(url) > constants.partner_url_max_chars:
            raise EgressRefused(
                f"partner URL is longer than {constants.partner_url_max_chars} characters",
                reason="bad_url",
            )
        parsed = self.check_url(url)
        try:
            ip: IPAddress | None = ipaddress.ip_address(parsed.host.split("%", 1)[0])
        except ValueError:
            ip = None  # a host name
        if ip is not None and not self.allowed(ip):
            why = forbidden_reason(ip)
            if why is not None:
                raise EgressRefused(
                    f"partner URL points at a forbidden address ({why}: {ip})",
                    reason="forbidden_address",
                )
        if parsed.scheme != "https" and (
            (ip is not None and not self.allowed(ip)) or (ip is None and not self.allow)
        ):
            raise EgressRefused(
                f"https is required (plain http only to addresses on the egress allow-list): "
                f"{redact_url(parsed)}",
                reason="https_required",
            )
        return parsed

    async def pin(self, url: httpx.URL, resolver: Resolver = system_resolver) -> IPAddress:
        """Resolve ``url``'s host and return the single address to connect to.

        :raises EgressRefused: ``resolve_failed``, ``forbidden_address`` or ``https_required``.
        """
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            answers = await resolver(url.host, port)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in answers]
        except (OSError, ValueError, UnicodeError) as e:
            raise EgressRefused(f"cannot resolve {redact_url(url)}", reason="resolve_failed") from e
        if not addresses:
            raise EgressRefused(f"{redact_url(url)} resolves to nothing", reason="resolve_failed")
        for ip in addresses:
            if self.allowed(ip):
                continue
            why = forbidden_reason(ip)
            if why is not None:
                raise EgressRefused(
                    f"{redact_url(url)} resolves to a forbidden address ({why}: {ip})",
                    reason="forbidden_address",
                )
        chosen = addresses[0]
        if url.scheme != "https" and not self.allowed(chosen):
            raise EgressRefused(f"https is required: {redact_url(url)}", reason="https_required")
        return chosen


#: The only answer headers the relay looks at (a 429/503's wait, a 3xx's target).
_KEPT_HEADERS = ("retry-after", "location")


@dataclass(frozen=True, slots=True)
class Response:
    """What the relay keeps of a partner's answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    truncated: bool
    latency_s: float


def redirect_target(url: str, location: str | None) -> str:
    """A redirect's ``Location``, made absolute against ``url`` and redacted (no credentials,
    no query), for the attempt records."""
    if not location:
        return "<none>"
    try:
        return redact_url(httpx.URL(url).join(location))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid url>"


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def new_client() -> httpx.AsyncClient:
    """The HTTP client for partner requests.

    No keep-alive: a pooled TLS connection is keyed by the pinned address, so reusing it could
    carry one partner's request over a session verified for another host on the same IP.
    ``trust_env=False`` so an ambient proxy cannot route around the address checks.
    """
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    policy: EgressPolicy,
    deadline_s: float,
    max_response_bytes: int,
    resolver: Resolver = system_resolver,
) -> Response:
    """POST ``content`` to ``url`` under the egress rules.

    :raises EgressRefused: the URL or its addresses are not allowed.
    :raises TimeoutError: the whole exchange took longer than ``deadline_s``.
    :raises httpx.HTTPError: connect or protocol failure.
    """
    parsed = policy.check_url(url)
    started = time.monotonic()
    async with asyncio.timeout(deadline_s):
        ip = await policy.pin(parsed, resolver)
        pinned = parsed.copy_with(host=str(ip))
        host_header = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
        if parsed.port is not None:
            host_header += f":{parsed.port}"
        request = client.build_request(
            "POST",
            pinned,
            content=content,
            headers={**headers, "host": host_header},
            # The TLS server name and certificate check stay on the partner's host name.
            extensions={"sni_hostname": parsed.host},
            timeout=httpx.Timeout(deadline_s),
        )
        response = await client.send(request, stream=True)
        try:
            body = bytearray()
            truncated = False
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= max_response_bytes:
                    # Only the status matters; a receiver must not make us buffer its output.
                    truncated = True
                    del body[max_response_bytes:]
                    break
        finally:
            await response.aclose()
    return Response(
        status=response.status_code,
        headers={k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS},
        body=bytes(body),
        truncated=truncated,
        latency_s=time.monotonic() - started,
    )
