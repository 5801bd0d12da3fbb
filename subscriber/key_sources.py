"""Where one verifier's keys come from, wired together at start.

- the issuer's **metadata** (fetched with jittered retries, so that a fleet restarted at once
  does not hit the issuer in lockstep), naming the stream and the announcement keys;
- the **stream follower** (:mod:`subscriber.follower`), the first source while it is live;
- the **snapshot refresher** (:mod:`subscriber.refresher`), which fetches the issuer's signed
  key-set snapshot on a resync, an unknown kid while degraded, and the poller;
- in upstream mode, **miss hints** to the watcher and, with the stream and the watcher out of
  reach, the **provider's own JWKS** (:mod:`subscriber.upstream_fallback`).

The announcement keys that events and snapshots are checked against are held here, shared by
the follower and the refresher, and reloaded from the issuer's metadata (over HTTP, never from
Redis) when a snapshot is signed by one we do not hold.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import httpx
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay
from tenacity import wait_random_exponential as wait_jittered

from . import constants
from .clock import Clock
from .config import VerifierConfig
from .errors import FetchError, InvalidKey
from .events import Event, load_announcement_keys
from .follower import StreamFollower
from .history import Freshness, KeySetSnapshot
from .jwks_client import JwksClient, Metadata, announcer_base
from .keyset import KeySet
from .liveness import Liveness
from .metrics import Metrics
from .miss_hints import MissHints
from .redis_keys import event_stream, freshness_stream
from .refresher import JwksRefresher, Spawn
from .upstream_fallback import UpstreamFallback

logger = logging.getLogger(__name__)


class KeySources:
    """The metadata, snapshot and (upstream mode) provider clients of one verifier.

    Built on the verifier's event loop; :meth:`follow` then fetches the metadata and builds
    the stream follower.

    :param after_adopt: awaited after each snapshot fetch (see :class:`JwksRefresher`).
    :param on_change: called when the provider's JWKS added keys.
    """

    follower: StreamFollower

    def __init__(
        self,
        *,
        config: VerifierConfig,
        issuer: str,
        keyset: KeySet,
        clock: Clock,
        metrics: Metrics,
        liveness: Liveness,
        http: httpx.AsyncClient,
        redis: aioredis.Redis,
        instance_id: str,
        spawn: Spawn,
        after_adopt: Callable[[float, bool, KeySetSnapshot], Awaitable[None]],
        on_change: Callable[[], None],
    ) -> None:
        self._config, self._issuer, self._keyset = config, issuer, keyset
        self._clock, self._metrics, self._liveness = clock, metrics, liveness
        self._on_change = on_change
        snapshot_url, metadata_url = config.snapshot_url, None
        if config.announcer_url is not None:
            base = announcer_base(config.announcer_url, issuer)
            snapshot_url = snapshot_url or base + constants.SNAPSHOT_PATH
            metadata_url = base + constants.METADATA_PATH
        self._snapshot_url = snapshot_url
        self.jwks = JwksClient(http, issuer, snapshot_url=snapshot_url, metadata_url=metadata_url)
        self.fallback: UpstreamFallback | None = None
        self.hints: MissHints | None = None
        if config.upstream:
            self.fallback = UpstreamFallback(http, issuer, clock, config.unknown_kid_cooldown_s)
            self.hints = MissHints(redis, issuer, instance_id, clock, config.miss_hint_interval_s)
            self.hints.bind(asyncio.get_running_loop(), spawn)
        self.announcement_keys: Mapping[str, Ed25519PublicKey] = {}
        self.refresher = JwksRefresher(
            client=self.jwks,
            keyset=keyset,
            clock=clock,
            metrics=metrics,
            cooldown_s=config.unknown_kid_cooldown_s,
            poll_bounds_s=config.poll_bounds_s,
            after_adopt=after_adopt,
            announcement_keys=lambda: self.announcement_keys,
            reload_announcement_keys=self.reload_announcement_keys,
            leeway_s=config.leeway_s,
            fallback=self.fall_back if config.upstream else None,
        )
        self.refresher.bind(asyncio.get_running_loop(), spawn)

    async def follow(
        self,
        redis: aioredis.Redis,
        *,
        on_fresh: Callable[[Freshness], None],
        on_connected: Callable[[bool], None],
        on_applied: Callable[[Event, float], None],
        on_error: Callable[[BaseException], None],
    ) -> StreamFollower:
        """Fetch the metadata (unless pinned keys and a snapshot URL make it unneeded) and
        build the stream follower; it is not started.

        :raises FetchError: the metadata could not be had, or announces no announcement keys.
        """
        self._on_error = on_error
        config, issuer, refresher = self._config, self._issuer, self.refresher
        metadata: Metadata | None = None
        if config.pinned is None or self._snapshot_url is None:
            metadata = await self._fetch_metadata()
        pinned = (
            config.pinned
            if config.pinned is not None
            else (metadata and metadata.announcement_keys)
        )
        if not pinned:
            raise FetchError(f"issuer {issuer} announces no announcement keys")
        stream = config.stream or (metadata and metadata.stream) or event_stream(issuer)
        if metadata is not None and metadata.freshness_interval_s is not None:
            self._liveness.announce_interval(metadata.freshness_interval_s)
        self.announcement_keys = load_announcement_keys(pinned)
        self.follower = StreamFollower(
            redis=redis,
            stream=stream,
            keyset=self._keyset,
            issuer=issuer,
            announcement_keys=self.announcement_keys,
            fresh_stream=(metadata and metadata.freshness_stream) or freshness_stream(issuer),
            on_fresh=on_fresh,
            refresh_jwks=lambda: refresher.refresh("resync", fresh=True),
            request_refresh=refresher.request,
            on_connected=on_connected,
            on_applied=on_applied,
            clock=self._clock,
            metrics=self._metrics,
            block_ms=config.block_ms,
            on_error=on_error,
        )
        return self.follower

    async def first_sync(self) -> bool:
        """Sync from the stream, or with Redis unreachable from the snapshot alone (the
        verifier starts degraded); returns whether the stream synced.

        :raises FetchError: no snapshot either (in upstream mode, no provider JWKS either).
        """
        try:
            await self.follower.resync("bootstrap")
            return True
        except (RedisError, OSError, FetchError) as e:
            if isinstance(e, FetchError) and not self._config.upstream:
                raise
            if not isinstance(e, FetchError):
                self._on_error(e)
            logger.warning("stream %s unreachable at start (%s), degraded", self.follower.stream, e)
            await self.refresher.refresh("bootstrap")
            return False

    async def _fetch_metadata(self) -> Metadata:
        # A fleet restarted at once would hit the issuer in lockstep: jittered retries.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(FetchError),
            wait=wait_jittered(multiplier=0.2, max=3.0),
            stop=stop_after_delay(self._config.start_timeout_s),
            before_sleep=lambda state: logger.info(
                "issuer metadata unavailable (%s), retrying",
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.jwks.fetch_metadata()
        raise AssertionError("unreachable")  # pragma: no cover

    async def fall_back(self, trigger: str) -> bool:
        """Upstream mode, announcer out of reach: add the provider's own keys (fetched over
        TLS from the provider, as any JWKS client would) to those held."""
        assert self.fallback is not None
        try:
            keys = await self.fallback.fetch()
        except FetchError:
            self._metrics.child(self._metrics.jwks_fetches, "upstream", "error").inc()
            raise
        if keys is None:
            return False  # inside the cooldown
        self._metrics.child(self._metrics.jwks_fetches, "upstream", "ok").inc()
        now = self._clock()
        self._liveness.confirm_unsigned(now)
        added = self._keyset.overlay(keys.keys, now)
        if added:
            logger.warning(
                "announcer unreachable (%s): %d keys from the provider's own JWKS",
                trigger,
                len(added),
                extra={"kids": added},
            )
            self._on_change()
        return bool(added)

    async def reload_announcement_keys(self) -> bool:
        """Reload the announcement keys from the metadata; returns whether they changed."""
        # An issuer started on an empty store draws a new announcement key; a snapshot signed
        # by it is checked against the metadata's keys, fetched over HTTP from the issuer (never
        # read from Redis). Pinned keys are never replaced from the network.
        if self._config.pinned is not None:
            return False
        metadata = await self.jwks.fetch_metadata()
        try:
            keys = load_announcement_keys(metadata.announcement_keys)
        except InvalidKey as e:
            raise FetchError(f"metadata announcement keys unusable: {e}") from e
        if not keys or keys.keys() == self.announcement_keys.keys():
            return False
        self.announcement_keys = keys
        self.follower.announcement_keys = keys
        logger.warning(
            "announcement keys reloaded for epoch %s", metadata.epoch, extra={"kids": sorted(keys)}
        )
        return True
