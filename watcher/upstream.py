"""The HTTP edge of the watcher: one upstream's discovery document and JWKS, fetched politely.

Every JWKS request is conditional once we hold a document (``If-None-Match`` with the last
``ETag``, ``If-Modified-Since`` with the last ``Last-Modified``), and the response's
freshness (``Cache-Control: max-age`` minus ``Age``) and ``Retry-After`` are handed to the
schedule. Nothing here decides when to fetch; :mod:`watcher.poller` does.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from subscriber.constants import METADATA_PATH
from subscriber.errors import InvalidKey, MalformedToken
from subscriber.jwks_client import parse_max_age
from subscriber.jws import strict_json_object
from subscriber.provider_jwks import ProviderKeys, load_provider_jwks

from . import constants
from .errors import UpstreamError
from .schedule import parse_retry_after

__all__ = ["Discovery", "Fetch", "UpstreamClient"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Discovery:
    """What the watcher reads from an issuer's ``openid-configuration``."""

    issuer: str
    jwks_uri: str
    #: ``id_token_signing_alg_values_supported``: the alg of an RSA key that names none.
    signing_algs: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Fetch:
    """One JWKS request and what came of it.

    ``keys`` is the parsed set on a ``200`` and the held set on a ``304``; ``None`` when the
    request failed (``error`` says why; the held keys stay as they were).
    """

    status: int | None
    keys: ProviderKeys | None
    not_modified: bool = False
    fresh_s: float | None = None
    retry_after_s: float | None = None
    error: str | None = None


class UpstreamClient:
    """Fetches one upstream issuer's discovery document and JWKS.

    :param http: the client to use; the caller owns it.
    :param issuer: the upstream's ``iss``; its discovery document must name it exactly
        (OIDC Discovery 4.3).
    :param jwks_url: an explicit JWKS URL; without it, the discovery document's ``jwks_uri``.
    :param signing_algs: the advertised signing algorithms when no discovery is made (used to
        infer the alg of RSA keys that name none).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        issuer: str,
        jwks_url: str | None = None,
        signing_algs: tuple[str, ...] | None = None,
    ) -> None:
        self._http = http
        self.issuer = issuer
        self.jwks_url = jwks_url
        self._explicit_url = jwks_url is not None
        self.signing_algs = signing_algs
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._held: ProviderKeys | None = None
        #: Requests made to the upstream (discovery and JWKS), and how many were 304s.
        self.requests = 0
        self.not_modified = 0

    async def _get(self, url: str, headers: Mapping[str, str]) -> httpx.Response:
        self.requests += 1
        try:
            return await self._http.get(url, headers=headers, timeout=constants.http_timeout_s)
        except httpx.HTTPError as e:
            raise UpstreamError(f"GET {url} failed: {type(e).__name__}") from e

    async def discover(self) -> Discovery:
        """GET the discovery document and adopt its ``jwks_uri`` and signing algorithms.

        :raises UpstreamError: unreachable, not 200, not JSON, for another issuer, or without
            a ``jwks_uri``.
        """
        url = self.issuer.rstrip("/") + METADATA_PATH
        response = await self._get(url, {"Accept": "application/json"})
        if response.status_code != 200:
            raise UpstreamError(f"GET {url} answered {response.status_code}")
        doc = _json_object(response, url)
        if doc.get("issuer") != self.issuer:
            raise UpstreamError(f"discovery at {url} is for issuer {doc.get('issuer')!r}")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise UpstreamError(f"discovery at {url} has no usable jwks_uri")
        algs = doc.get("id_token_signing_alg_values_supported")
        signing = tuple(a for a in algs if isinstance(a, str)) if isinstance(algs, list) else None
        self.jwks_url, self.signing_algs = jwks_uri, signing
        return Discovery(self.issuer, jwks_uri, signing)

    async def fetch(self, now: float) -> Fetch:
        """One conditional GET of the JWKS (discovering it first when needed)."""
        try:
            if self.jwks_url is None:
                await self.discover()
            assert self.jwks_url is not None
            response = await self._get(self.jwks_url, self._conditional_headers())
        except UpstreamError as e:
            return Fetch(status=None, keys=None, error=str(e))
        status = response.status_code
        fresh_s = _freshness_s(response.headers)
        retry_after_s = parse_retry_after(response.headers.get("retry-after"), now)
        if status == 304 and self._held is not None:
            self.not_modified += 1
            return Fetch(status, self._held, True, fresh_s, retry_after_s)
        if status != 200:
            if status in (404, 410) and not self._explicit_url:
                # The provider moved its JWKS: rediscover on the next poll. An explicit
                # jwks_url is the operator's and stays.
                self.jwks_url = None
            return Fetch(status, None, False, None, retry_after_s, f"JWKS answered {status}")
        try:
            doc = _json_object(response, self.jwks_url)
            keys = load_provider_jwks(doc, advertised_algs=self.signing_algs)
        except (UpstreamError, InvalidKey) as e:
            return Fetch(status, None, False, None, retry_after_s, f"JWKS refused: {e}")
        self._held = keys
        self._etag = response.headers.get("etag")
        self._last_modified = response.headers.get("last-modified")
        return Fetch(status, keys, False, fresh_s, retry_after_s)

    def _conditional_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._held is not None:
            if self._etag is not None:
                headers["If-None-Match"] = self._etag
            if self._last_modified is not None:
                headers["If-Modified-Since"] = self._last_modified
        return headers


def _freshness_s(headers: httpx.Headers) -> float | None:
    max_age = parse_max_age(headers.get("cache-control"))
    if max_age is None:
        return None
    age = headers.get("age", "").strip()
    return max(0.0, max_age - (float(age) if age.isdigit() else 0.0))


def _json_object(response: httpx.Response, url: str) -> dict[str, Any]:
    if len(response.content) > constants.max_document_bytes:
        raise UpstreamError(f"GET {url}: document larger than {constants.max_document_bytes} bytes")
    try:
        return strict_json_object(response.content)
    except MalformedToken as e:
        raise UpstreamError(f"GET {url} did not return a JSON object") from e
