"""HTTP fetches of the issuer's metadata and JWKS (httpx), the fallback the stream makes rare.

JWKS fetches are conditional (``If-None-Match`` with the last ``ETag``; a ``304`` returns the
document we already hold) and report the response's ``Cache-Control: max-age`` so the poller
can honour it. Every transport, status or parse failure is wrapped in :class:`FetchError`.
"""

import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .constants import (
    METADATA_PATH,
    SNAPSHOT_PATH,
    UPSTREAMS_PATH,
    default_poll_interval_s,
    max_document_bytes,
    max_poll_interval_s,
    min_poll_interval_s,
    poll_jitter_ratio,
)
from .errors import FetchError, MalformedToken
from .jws import strict_json_object
from .redis_keys import issuer_tag

logger = logging.getLogger(__name__)

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Metadata:
    """What a verifier needs from ``/.well-known/openid-configuration``."""

    issuer: str
    jwks_uri: str
    stream: str | None
    announcement_keys: list[Mapping[str, Any]]
    #: The key-store epoch the announcement keys belong to.
    epoch: str | None
    snapshot_uri: str | None = None
    freshness_stream: str | None = None
    freshness_interval_s: float | None = None
    #: ``id_token_signing_alg_values_supported`` (infers the alg of RSA keys that name none).
    signing_algs: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """A snapshot fetch: the compact JWS as served, and its ``max-age`` if any."""

    token: str
    max_age_s: float | None


@dataclass(frozen=True, slots=True)
class _Response:
    status_code: int
    headers: httpx.Headers
    content: bytes


@dataclass(frozen=True, slots=True)
class JwksResponse:
    """A JWKS fetch: the document, whether it was a ``304``, and how long it may be cached."""

    doc: Mapping[str, Any]
    not_modified: bool
    max_age_s: float | None


def parse_max_age(cache_control: str | None) -> float | None:
    """``max-age`` in seconds from a ``Cache-Control`` value; ``0`` for no-cache/no-store."""
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


def poll_delay_s(
    max_age_s: float | None,
    rng: random.Random,
    *,
    min_s: float = min_poll_interval_s,
    max_s: float = max_poll_interval_s,
) -> float:
    """Seconds until the next poll: ``max-age`` clamped to ``[min_s, max_s]``, minus jitter.

    Jitter only shortens the delay, so a poll never waits past the document's freshness.
    """
    interval = default_poll_interval_s if max_age_s is None else max_age_s
    interval = min(max(interval, min_s), max_s)
    return interval * (1.0 - poll_jitter_ratio * rng.random())


# The connection failed under the request, most often a keep-alive connection the server
# closed just as the pool reused it. A GET is idempotent, so it is sent once more; timeouts
# are not here, so a hanging issuer never costs two waits.
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class JwksClient:
    """Fetches one issuer's metadata and JWKS.

    :param http: the client to use; the caller owns it (and closes it).
    :param issuer: the issuer URL; metadata for another issuer is refused (OIDC Discovery 4.3).
    :param jwks_url: overrides the metadata's ``jwks_uri``.
    :param metadata_url: where the metadata is (default: the issuer's
        ``/.well-known/openid-configuration``; an upstream watcher serves it elsewhere, see
        :func:`announcer_base`).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        issuer: str,
        jwks_url: str | None = None,
        snapshot_url: str | None = None,
        metadata_url: str | None = None,
    ) -> None:
        self._http = http
        self.metadata_url = metadata_url or issuer.rstrip("/") + METADATA_PATH
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.snapshot_url = snapshot_url
        self._etag: str | None = None
        self._doc: Mapping[str, Any] | None = None

    async def _get(self, url: str, headers: Mapping[str, str]) -> "_Response":
        # Every fetch follows something the stream said (bootstrap, resync, a new epoch, a
        # delivery's key set), so it must not get a copy older than the store: no-cache makes
        # an issuer serving from memory revalidate (RFC 9111 5.2.1.4).
        headers = {**headers, "Cache-Control": "no-cache"}
        try:
            try:
                return await self._get_capped(url, headers)
            except _DROPPED as e:
                logger.debug("GET %s: connection dropped (%s), sending again", url, e)
                return await self._get_capped(url, headers)
        except httpx.HTTPError as e:
            raise FetchError(f"GET {url} failed: {type(e).__name__}") from e

    async def _get_capped(self, url: str, headers: Mapping[str, str]) -> "_Response":
        # Read at most max_document_bytes: a huge answer (a hostile or broken server) is
        # refused without holding it in memory.
        async with self._http.stream("GET", url, headers=headers) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_document_bytes:
                    raise FetchError(f"GET {url}: response larger than {max_document_bytes} bytes")
            return _Response(response.status_code, response.headers, bytes(body))

    async def fetch_metadata(self) -> Metadata:
        """GET the issuer's openid-configuration.

        :raises FetchError: unreachable, not 200, not JSON, or for another issuer.
        """
        url = self.metadata_url
        response = await self._get(url, {"Accept": "application/json"})
        doc = _json_object(response, url)
        if doc.get("issuer") != self.issuer:
            raise FetchError(f"metadata at {url} is for issuer {doc.get('issuer')!r}")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchError(f"metadata at {url} has no jwks_uri")
        member = doc.get("keyherald")
        member = member if isinstance(member, Mapping) else {}
        announcement = member.get("announcement_keys")
        interval = member.get("freshness_interval_s")
        algs = doc.get("id_token_signing_alg_values_supported")
        snapshot_uri = _str(member.get("snapshot_uri"))
        if self.snapshot_url is None and snapshot_uri is not None:
            self.snapshot_url = snapshot_uri
        return Metadata(
            epoch=_str(member.get("epoch")),
            issuer=self.issuer,
            jwks_uri=jwks_uri,
            stream=_str(member.get("stream")),
            announcement_keys=list(announcement) if isinstance(announcement, list) else [],
            snapshot_uri=snapshot_uri,
            freshness_stream=_str(member.get("freshness_stream")),
            freshness_interval_s=float(interval)
            if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0
            else None,
            signing_algs=tuple(a for a in algs if isinstance(a, str))
            if isinstance(algs, list)
            else None,
        )

    async def fetch_snapshot(self) -> SnapshotResponse:
        """GET the signed key-set snapshot (verified by the caller, who holds the keys).

        :raises FetchError: unreachable, not 200, or larger than the cap.
        """
        url = self.snapshot_url or self.issuer.rstrip("/") + SNAPSHOT_PATH
        response = await self._get(url, {"Accept": "application/jwt"})
        if response.status_code != 200:
            raise FetchError(f"GET {url} answered {response.status_code}")
        try:
            token = response.content.decode("ascii").strip()
        except UnicodeDecodeError as e:
            raise FetchError(f"GET {url} did not return a compact JWS") from e
        return SnapshotResponse(token, parse_max_age(response.headers.get("cache-control")))

    async def fetch_jwks(self, *, conditional: bool = True) -> JwksResponse:
        """GET the JWKS, conditionally on the last ``ETag`` we saw.

        :raises FetchError: unreachable, a status other than 200/304, or not a JSON object.
        """
        if self.jwks_url is None:
            self.jwks_url = (await self.fetch_metadata()).jwks_uri
        url = self.jwks_url
        headers = {"Accept": "application/json"}
        if conditional and self._etag is not None and self._doc is not None:
            headers["If-None-Match"] = self._etag
        response = await self._get(url, headers)
        max_age_s = parse_max_age(response.headers.get("cache-control"))
        if response.status_code == 304 and "If-None-Match" in headers and self._doc is not None:
            logger.debug("JWKS not modified", extra={"etag": self._etag})
            return JwksResponse(self._doc, not_modified=True, max_age_s=max_age_s)
        doc = _json_object(response, url)
        self._doc, self._etag = doc, response.headers.get("etag")
        return JwksResponse(doc, not_modified=False, max_age_s=max_age_s)

    def forget(self) -> None:
        """Drop the cached document, so the next fetch is unconditional."""
        self._doc = self._etag = None


def announcer_base(announcer_url: str, issuer: str) -> str:
    """Where an upstream watcher at ``announcer_url`` serves the metadata and signed snapshot
    of upstream ``issuer`` (``<url>/upstreams/<issuer tag>``)."""
    return f"{announcer_url.rstrip('/')}{UPSTREAMS_PATH}/{issuer_tag(issuer)}"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json_object(response: _Response, url: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise FetchError(f"GET {url} answered {response.status_code}")
    try:
        return strict_json_object(response.content)
    except MalformedToken as e:
        raise FetchError(f"GET {url} did not return a JSON object") from e
