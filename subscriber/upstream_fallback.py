"""The last resort of a verifier of an upstream issuer: the provider's own JWKS.

When neither the stream nor the watcher's signed snapshot can be had (Redis down, the watcher
down), a verifier in upstream mode fetches the provider's JWKS itself, as any JWKS client
would: discovery at the issuer URL, then a conditional GET of its ``jwks_uri``, parsed key by
key (:func:`subscriber.provider_jwks.load_provider_jwks`). Fetches are single-flight (callers
share one in flight) and at most one per ``cooldown_s``: a flood of unknown kids while
degraded costs the provider one request per cooldown per verifier.
"""

import asyncio
import logging
import math

import httpx

from .clock import Clock
from .errors import FetchError, InvalidKey
from .jwks_client import JwksClient
from .provider_jwks import ProviderKeys, load_provider_jwks

logger = logging.getLogger(__name__)


class UpstreamFallback:
    """Fetches one upstream's JWKS directly, single-flight, at most once per cooldown.

    :param http: the client to use; the caller owns it.
    :param issuer: the upstream's ``iss`` (its discovery must name it exactly).
    """

    def __init__(
        self, http: httpx.AsyncClient, issuer: str, clock: Clock, cooldown_s: float
    ) -> None:
        self.client = JwksClient(http, issuer)
        self._clock = clock
        self.cooldown_s = cooldown_s
        self._algs: tuple[str, ...] | None = None
        self._inflight: asyncio.Task[ProviderKeys] | None = None
        self._last_at = -math.inf
        #: Fetches made (discovery not counted).
        self.fetches = 0

    async def fetch(self) -> ProviderKeys | None:
        """The provider's keys; ``None`` inside the cooldown (and no fetch in flight).

        :raises FetchError: unreachable, or not a usable JWK Set.
        """
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            return await asyncio.shield(inflight)
        now = self._clock()
        if now - self._last_at < self.cooldown_s:
            return None
        self._last_at = now
        self._inflight = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> ProviderKeys:
        if self.client.jwks_url is None:
            metadata = await self.client.fetch_metadata()
            self.client.jwks_url, self._algs = metadata.jwks_uri, metadata.signing_algs
        self.fetches += 1
        response = await self.client.fetch_jwks()
        try:
            return load_provider_jwks(response.doc, advertised_algs=self._algs)
        except InvalidKey as e:
            raise FetchError(f"upstream JWKS refused: {e}") from e
