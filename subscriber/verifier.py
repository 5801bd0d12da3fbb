"""``Verifier``: the subscriber's public API, a key cache kept warm by the issuer's stream.

::

    async with Verifier(issuer="https://id.example.com", audience="orders-api",
                        redis_url="redis://127.0.0.1:6379/0") as verifier:
        claims = verifier.verify(token)      # CPU only: no I/O, no await

Three background tasks keep the cache current: the stream follower (``follower.py``), a poller
of the signed snapshot that only polls while the verifier is not live, and the presence
heartbeat. States:

- ``live``: following the stream, and the issuer's newest signed freshness record (or snapshot)
  matches the key set held and is younger than the freshness bound; an unknown ``kid`` is
  refused at once, with no network.
- ``degraded``: the stream is unreachable, or silent past the freshness bound (withheld
  events, a dead issuer, a stuck connection); the last known-good keys keep verifying, the
  signed snapshot is polled, and an unknown ``kid`` may trigger one background refresh per
  cooldown.
- ``failed``: the stream follower died (a bug, an incompatible dependency) and is being
  restarted with backoff; the verifier behaves as ``degraded`` until it follows again.
- ``stale``: nothing confirmed the key set (freshness record or snapshot) for
  ``max_staleness_s``; tokens are refused (``keys_stale``) unless
  ``stale_policy="keep_verifying"``.
"""

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal

import httpx
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import REGISTRY, CollectorRegistry
from redis.exceptions import MaxClientsReachedError, RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay
from tenacity import wait_random_exponential as wait_jittered

from . import clients, constants
from .clock import Clock, system_clock
from .errors import FetchError, InvalidKey, InvalidToken, KeyNotFound, KeyNotUsable
from .events import Event, load_announcement_keys
from .follower import StreamFollower
from .health import Health, State
from .history import Freshness, KeySetSnapshot
from .jwk import SUPPORTED_ALGS
from .jwks_client import JwksClient, Metadata, announcer_base
from .jws import strict_json_object
from .keyset import KeySet
from .metrics import Metrics, metrics_for
from .miss_hints import MissHints
from .presence import HeartbeatRecord, Presence, new_instance_id
from .redis_conn import RedisClients, parse_redis_url
from .redis_keys import event_stream, freshness_stream
from .refresher import JwksRefresher
from .supervisor import supervise
from .token_cache import TokenCache
from .upstream_fallback import UpstreamFallback
from .verify import VerifyOptions, check_claims, verify_signature

logger = logging.getLogger(__name__)

StalePolicy = Literal["fail_closed", "keep_verifying"]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be greater than 0, the input is {value!r}")
    return float(value)


class Verifier:
    """Verifies JWTs against a key cache that the issuer's event stream keeps current.

    :param issuer: the issuer URL: the exact ``iss`` required, and where metadata is fetched
        (unless an ``announcer`` speaks for it).
    :param audience: the accepted audience, or a set of them.
    :param redis_url: the Redis deployment holding the issuer's stream, in any form of
        :mod:`subscriber.redis_conn` (plain, TLS, Sentinel, Cluster, read replicas); or pass
        ``redis``.
    :param redis: an existing ``redis.asyncio`` client (the caller keeps ownership).
    :param announcer: upstream mode, for tokens of a hosted identity provider (Auth0, Okta,
        Entra, Google, Keycloak...) whose keys a ``keyherald watch`` announces: the watcher's
        base URL (its metadata and signed snapshot for ``issuer`` are read there), or its
        pinned announcement JWKs (then pass ``snapshot_url`` too). Live, an unknown kid is
        reported to the watcher (a miss hint); with the stream and the watcher out of reach,
        the provider's own JWKS is fetched, single-flight, at most once per
        ``unknown_kid_cooldown_s``.
    :param miss_hint_interval_s: upstream mode: at most one miss hint per this many seconds;
        keep it below the watcher's cooldown.
    :param snapshot_url: overrides the metadata's ``snapshot_uri`` (the signed key-set
        snapshot); with pinned ``announcement_keys`` too, the metadata is never fetched.
    :param stream: overrides the stream key the metadata announces.
    :param algorithms: the signing algorithms accepted.
    :param leeway_s: clock skew tolerated on ``exp``/``nbf``/``iat``.
    :param typ: the ``typ`` header every token must carry, if any.
    :param announcement_keys: pinned Ed25519 public JWKs that sign events; by default the
        ones the issuer's metadata lists.
    :param clock: seconds since the epoch; injected in tests.
    :param http_client: an existing ``httpx.AsyncClient`` (the caller keeps ownership).
    :param stale_policy: ``"fail_closed"`` (default) refuses tokens once stale,
        ``"keep_verifying"`` keeps serving the last known-good keys.
    :param max_staleness_s: how long keys stay trusted with the stream unreachable and no
        successful JWKS fetch.
    :param unknown_kid_cooldown_s: while degraded, at most one unknown-kid JWKS refresh per
        this many seconds.
    :param min_poll_interval_s: lower bound of the JWKS poll interval (``max-age``-driven).
    :param max_poll_interval_s: upper bound of the JWKS poll interval.
    :param presence: write heartbeat records (``docs/protocol.md``).
    :param service: a service name for the heartbeat record.
    :param heartbeat_interval_s: how often the heartbeat is refreshed (and on every change).
    :param heartbeat_ttl_s: how long one heartbeat keeps this instance listed.
    :param block_ms: ``XREAD BLOCK``; lowered to half the Redis client's socket timeout.
    :param freshness_bound_s: the verifier is degraded once the newest signed freshness is
        older than this; default: ``freshness_intervals_allowed`` times the interval the
        issuer announces, plus ``leeway_s``.
    :param registry: the Prometheus registry for metrics; ``None`` turns them off.
    :param token_cache_size: verified tokens remembered, so a token seen again skips its
        signature check (``exp``/``nbf`` and its key are still checked each time); 0 turns
        the cache off. See :mod:`subscriber.token_cache`.
    :param start_timeout_s: how long :meth:`start` retries an unreachable issuer, with
        jittered backoff so that a fleet started together does not retry together.
    :raises ValueError: a setting that cannot work, named with its value.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | frozenset[str],
        redis_url: str | None = None,
        redis: aioredis.Redis | None = None,
        snapshot_url: str | None = None,
        stream: str | None = None,
        algorithms: frozenset[str] = frozenset(SUPPORTED_ALGS),
        leeway_s: float = constants.leeway_s,
        typ: str | None = None,
        announcement_keys: Sequence[Mapping[str, Any]] | None = None,
        clock: Clock = system_clock,
        http_client: httpx.AsyncClient | None = None,
        stale_policy: StalePolicy = "fail_closed",
        max_staleness_s: float = constants.max_staleness_s,
        unknown_kid_cooldown_s: float = constants.unknown_kid_cooldown_s,
        min_poll_interval_s: float = constants.min_poll_interval_s,
        max_poll_interval_s: float = constants.max_poll_interval_s,
        presence: bool = True,
        service: str | None = None,
        heartbeat_interval_s: float = constants.heartbeat_interval_s,
        heartbeat_ttl_s: float = constants.heartbeat_ttl_s,
        block_ms: int = constants.block_ms,
        registry: CollectorRegistry | None = REGISTRY,
        token_cache_size: int = constants.token_cache_size,
        freshness_bound_s: float | None = None,
        announcer: str | Sequence[Mapping[str, Any]] | None = None,
        miss_hint_interval_s: float = constants.miss_hint_interval_s,
        start_timeout_s: float = constants.start_timeout_s,
    ) -> None:
        if (redis_url is None) == (redis is None):
            raise ValueError("pass exactly one of redis_url and redis")
        self._target = parse_redis_url(redis_url, setting="redis_url") if redis_url else None
        if isinstance(start_timeout_s, bool) or not start_timeout_s >= 0:
            raise ValueError(f"start_timeout_s must be 0 or more, the input is {start_timeout_s!r}")
        self._start_timeout_s = float(start_timeout_s)
        if stale_policy not in ("fail_closed", "keep_verifying"):
            raise ValueError(
                f'stale_policy must be "fail_closed" or "keep_verifying", '
                f'the input is "{stale_policy}"'
            )
        if not _positive("max_poll_interval_s", max_poll_interval_s) >= min_poll_interval_s:
            raise ValueError(
                f"max_poll_interval_s ({max_poll_interval_s}) is below "
                f"min_poll_interval_s ({min_poll_interval_s})"
            )
        if _positive("heartbeat_ttl_s", heartbeat_ttl_s) <= heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_ttl_s ({heartbeat_ttl_s}) must exceed "
                f"heartbeat_interval_s ({heartbeat_interval_s})"
            )
        self._announcer_url: str | None = None
        if isinstance(announcer, str):
            self._announcer_url = announcer
        elif announcer is not None:
            if announcement_keys is not None:
                raise ValueError("pass the announcement keys once: announcer or announcement_keys")
            if snapshot_url is None:
                raise ValueError(
                    "announcer given as pinned keys needs snapshot_url (the watcher's signed "
                    "snapshot of this issuer)"
                )
            announcement_keys = list(announcer)
        self._upstream = announcer is not None
        self._hint_interval_s = _positive("miss_hint_interval_s", miss_hint_interval_s)
        self.issuer = issuer
        self.options = VerifyOptions(
            issuer=issuer, audience=audience, algorithms=algorithms, leeway_s=leeway_s, typ=typ
        )
        self._redis_url, self._redis = redis_url, redis
        self._snapshot_url, self._stream = snapshot_url, stream
        self._pinned = list(announcement_keys) if announcement_keys is not None else None
        if self._pinned is not None:
            load_announcement_keys(self._pinned)  # refuse a bad pin now, not at start
        self._clock = clock
        self._http = http_client
        self._fail_closed = stale_policy == "fail_closed"
        self._max_staleness_s = _positive("max_staleness_s", max_staleness_s)
        self._cooldown_s = _positive("unknown_kid_cooldown_s", unknown_kid_cooldown_s)
        self._poll_bounds = (
            _positive("min_poll_interval_s", min_poll_interval_s),
            max_poll_interval_s,
        )
        self._presence_on, self._service = presence, service
        self._heartbeat_interval_s = _positive("heartbeat_interval_s", heartbeat_interval_s)
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._block_ms = int(_positive("block_ms", block_ms))
        self._leeway_s = leeway_s
        self._fixed_bound_s = (
            None if freshness_bound_s is None else _positive("freshness_bound_s", freshness_bound_s)
        )
        self._fresh_bound_s = self._bound_for(constants.freshness_interval_s)
        self._fresh_at = -math.inf
        self._metrics = metrics_for(registry)
        self._count = self._metrics.verifications.add
        self._valid = self._metrics.verifications.counter("ok")
        self._lag_gauge = self._metrics.child(self._metrics.stream_lag, issuer)
        self._version_gauge = self._metrics.child(self._metrics.keyset_version, issuer)
        self.instance_id = new_instance_id()
        if (
            isinstance(token_cache_size, bool)
            or not isinstance(token_cache_size, int)
            or token_cache_size < 0
        ):
            raise ValueError(
                f"token_cache_size must be an integer >= 0, the input is {token_cache_size!r}"
            )
        self.keyset = KeySet(
            issuer, TokenCache(token_cache_size, constants.token_cache_max_token_chars)
        )
        # None when off, so the hot path pays one test for it.
        self._tokens = self.keyset.tokens if token_cache_size else None
        # Written by the event loop, read by verify() on any thread: plain attributes whose
        # single assignments are atomic.
        self._running = False
        self._connected = False
        self._confirmed_at = -math.inf
        self._last_event_ts: float | None = None
        self._lag_s: float | None = None
        self._restarts = 0
        self._failure: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._own_redis: RedisClients | None = None
        self._redis_error: str | None = None
        self._own_http: httpx.AsyncClient | None = None
        self._presence: Presence | None = None
        self._refresher: JwksRefresher | None = None
        self._hints: MissHints | None = None
        self._fallback: UpstreamFallback | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> "Verifier":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bootstrap the key set and start following the stream.

        With Redis unreachable the verifier starts ``degraded`` from the JWKS alone.

        :raises FetchError: the issuer's metadata or JWKS could not be fetched.
        """
        if self._loop is not None:
            raise RuntimeError("a Verifier can be started once")
        self._loop = asyncio.get_running_loop()
        self._degraded = asyncio.Event()
        self._dirty = asyncio.Event()
        try:
            await self._bootstrap()
        except BaseException:
            await self.aclose()
            raise

    async def _bootstrap(self) -> None:
        # Shared with the other verifiers of this loop (subscriber/clients.py).
        stream_redis = self._redis
        if self._redis is None:
            self._own_redis = clients.acquire_redis(
                str(self._redis_url), constants.socket_timeout_s
            )
            self._redis, stream_redis = self._own_redis.primary, self._own_redis.stream
        assert stream_redis is not None
        if self._http is None:
            self._http = self._own_http = clients.acquire_http(constants.http_timeout_s)
        snapshot_url, metadata_url = self._snapshot_url, None
        if self._announcer_url is not None:
            base = announcer_base(self._announcer_url, self.issuer)
            snapshot_url = snapshot_url or base + constants.SNAPSHOT_PATH
            metadata_url = base + constants.METADATA_PATH
        self._jwks = JwksClient(
            self._http, self.issuer, snapshot_url=snapshot_url, metadata_url=metadata_url
        )
        if self._upstream:
            self._fallback = UpstreamFallback(
                self._http, self.issuer, self._clock, self._cooldown_s
            )
            self._hints = MissHints(
                self._redis, self.issuer, self.instance_id, self._clock, self._hint_interval_s
            )
            self._hints.bind(asyncio.get_running_loop(), self._spawn)
        self._announcement_keys: Mapping[str, Ed25519PublicKey] = {}
        self._refresher = refresher = JwksRefresher(
            client=self._jwks,
            keyset=self.keyset,
            clock=self._clock,
            metrics=self._metrics,
            cooldown_s=self._cooldown_s,
            poll_bounds_s=self._poll_bounds,
            after_adopt=self._after_adopt,
            announcement_keys=lambda: self._announcement_keys,
            reload_announcement_keys=self._refresh_announcement_keys,
            leeway_s=self._leeway_s,
            fallback=self._fall_back if self._upstream else None,
        )
        refresher.bind(asyncio.get_running_loop(), self._spawn)
        metadata: Metadata | None = None
        if self._pinned is None or snapshot_url is None:
            metadata = await self._fetch_metadata()
        pinned = (
            self._pinned if self._pinned is not None else metadata and metadata.announcement_keys
        )
        if not pinned:
            raise FetchError(f"issuer {self.issuer} announces no announcement keys")
        stream = self._stream or (metadata and metadata.stream) or event_stream(self.issuer)
        if metadata is not None and metadata.freshness_interval_s is not None:
            self._fresh_bound_s = self._bound_for(metadata.freshness_interval_s)
        self._announcement_keys = load_announcement_keys(pinned)
        self._follower = StreamFollower(
            redis=stream_redis,
            stream=stream,
            keyset=self.keyset,
            issuer=self.issuer,
            announcement_keys=self._announcement_keys,
            fresh_stream=(metadata and metadata.freshness_stream) or freshness_stream(self.issuer),
            on_fresh=self._on_fresh,
            refresh_jwks=lambda: refresher.refresh("resync", fresh=True),
            request_refresh=refresher.request,
            on_connected=self._on_connected,
            on_applied=self._on_applied,
            clock=self._clock,
            metrics=self._metrics,
            block_ms=self._block_ms,
            on_error=self._on_redis_error,
        )
        try:
            await self._follower.resync("bootstrap")
            synced = True
        except (RedisError, OSError, FetchError) as e:
            if isinstance(e, FetchError) and not self._upstream:
                raise
            if not isinstance(e, FetchError):
                self._on_redis_error(e)
            logger.warning("stream %s unreachable at start (%s), degraded", stream, e)
            await refresher.refresh("bootstrap")
            synced = False
        self._running = True
        self._on_connected(synced)
        follower = self._follower
        # A restarted follower resyncs first: the bootstrap's sync is only good once.
        self._supervise("follower", lambda restarts: follower.run(synced=synced and not restarts))
        self._supervise(
            "poller",
            lambda _: refresher.poll(
                self._degraded, self._is_live, lambda: self._confirmed_at, self._fresh_bound_s / 4
            ),
        )
        if self._presence_on:
            self._presence = presence = Presence(
                self._redis, self.issuer, self.instance_id, self._clock, self._heartbeat_ttl_s
            )
            self._supervise(
                "heartbeat",
                lambda _: presence.run(
                    self.heartbeat_record, self._dirty, self._heartbeat_interval_s, self._metrics
                ),
            )
        logger.info(
            "verifier started (%s)",
            self.health().state,
            extra={"version": self.keyset.version, "instance_id": self.instance_id},
        )

    async def _fetch_metadata(self) -> Metadata:
        # A fleet restarted at once would hit the issuer in lockstep: jittered retries.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(FetchError),
            wait=wait_jittered(multiplier=0.2, max=3.0),
            stop=stop_after_delay(self._start_timeout_s),
            before_sleep=lambda state: logger.info(
                "issuer metadata unavailable (%s), retrying",
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._jwks.fetch_metadata()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Stop the background tasks, say goodbye in the presence index, close owned clients."""
        self._running = False
        tasks, self._tasks = self._tasks, set()
        inflight = self._refresher.unbind() if self._refresher is not None else None
        if self._hints is not None:
            self._hints.unbind()
        if inflight is not None:
            tasks.add(inflight)
        for task in tasks:
            task.cancel()
        # Children's CancelledError are results here; our own cancellation still propagates.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._presence is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._presence.leave()
        owned = (self._own_redis, self._own_http)
        self._own_redis = self._own_http = None
        for client in owned:
            if client is not None:
                await clients.release(client)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"keyherald-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _supervise(self, name: str, start: Callable[[int], Coroutine[Any, Any, object]]) -> None:
        self._spawn(
            supervise(name, start, metrics=self._metrics, on_death=self._on_task_death), name
        )

    def _on_task_death(self, name: str, error: BaseException) -> None:
        self._restarts += 1
        if name != "follower":
            return
        # Nothing follows the stream any more: stop claiming to, so the poller takes over and
        # readiness probes (and the issuer's confirmed gate, through the heartbeat) see it.
        self._failure = f"follower died: {type(error).__name__}"
        self._on_connected(False)
        self._publish_state()
        self._dirty.set()

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s died", task.get_name(), exc_info=task.exception())

    @property
    def metrics(self) -> Metrics:
        """This verifier's Prometheus metrics (shared with verifiers on the same registry)."""
        return self._metrics

    # -- the hot path ----------------------------------------------------------------------

    def verify(self, token: str) -> dict[str, Any]:
        """Verify ``token`` and return its claims. CPU only: no I/O, never blocks.

        :raises InvalidToken: a subclass whose ``reason`` says why.
        :raises RuntimeError: the verifier is not started.
        """
        if not self._running:
            raise RuntimeError("Verifier is not running: use 'async with Verifier(...)'")
        view = self.keyset.view
        now = self._clock()
        tokens = self._tokens
        try:
            if self._fail_closed and now - self._confirmed_at > self._max_staleness_s:
                raise KeyNotUsable(
                    "keys are stale: nothing confirmed them for too long", reason="keys_stale"
                )
            if tokens is not None:
                claims = tokens.get(token, view.keys, self.options, now)
                if claims is not None:
                    next(self._valid)
                    return claims
            # verify_token, in its two stages, to keep the kid and payload for the cache.
            header, payload = verify_signature(token, view.keys, self.options, view.gone)
            claims = strict_json_object(payload)
            check_claims(claims, self.options, now)
            if tokens is not None:
                kid = header["kid"]
                tokens.put(token, view.keys[kid], kid, claims, payload)
        except KeyNotFound as e:
            self._count(e.reason)
            if e.reason == "unknown_kid" and self._refresher is not None:
                if not self._is_live(now):
                    self._refresher.request("unknown_kid")
                elif self._hints is not None and e.kid is not None:
                    self._hints.report(e.kid)
            raise
        except InvalidToken as e:
            self._count(e.reason)
            raise
        next(self._valid)
        return claims

    # -- JWKS ------------------------------------------------------------------------------

    async def _after_adopt(self, now: float, changed: bool, snapshot: KeySetSnapshot) -> None:
        if snapshot.freshness_interval_s is not None:
            self._fresh_bound_s = self._bound_for(snapshot.freshness_interval_s)
        view = self.keyset.view
        if (view.epoch, view.version, view.digest) == (
            snapshot.epoch,
            snapshot.version,
            snapshot.digest,
        ):
            self._confirm(snapshot.iat)
        if changed:
            self._version_gauge.set(self.keyset.version)
            self._dirty.set()

    async def _fall_back(self, trigger: str) -> bool:
        """Upstream mode, announcer out of reach: add the provider's own keys (fetched over
        TLS from the provider, as any JWKS client would) to those held."""
        assert self._fallback is not None
        try:
            keys = await self._fallback.fetch()
        except FetchError:
            self._metrics.child(self._metrics.jwks_fetches, "upstream", "error").inc()
            raise
        if keys is None:
            return False  # inside the cooldown
        self._metrics.child(self._metrics.jwks_fetches, "upstream", "ok").inc()
        now = self._clock()
        self._confirmed_at = now
        added = self.keyset.overlay(keys.keys, now)
        if added:
            logger.warning(
                "announcer unreachable (%s): %d keys from the provider's own JWKS",
                trigger,
                len(added),
                extra={"kids": added},
            )
            self._dirty.set()
        return bool(added)

    async def _refresh_announcement_keys(self) -> bool:
        # An issuer started on an empty store draws a new announcement key; a snapshot signed
        # by it is checked against the metadata's keys, fetched over HTTP from the issuer (never
        # read from Redis). Pinned keys are never replaced from the network.
        if self._pinned is not None:
            return False
        metadata = await self._jwks.fetch_metadata()
        try:
            keys = load_announcement_keys(metadata.announcement_keys)
        except InvalidKey as e:
            raise FetchError(f"metadata announcement keys unusable: {e}") from e
        if not keys or keys.keys() == self._announcement_keys.keys():
            return False
        self._announcement_keys = keys
        self._follower.announcement_keys = keys
        logger.warning(
            "announcement keys reloaded for epoch %s", metadata.epoch, extra={"kids": sorted(keys)}
        )
        return True

    # -- freshness -------------------------------------------------------------------------

    def _bound_for(self, interval_s: float) -> float:
        if self._fixed_bound_s is not None:
            return self._fixed_bound_s
        return constants.freshness_intervals_allowed * interval_s + self._leeway_s

    def _confirm(self, issued_at: float) -> None:
        """The issuer vouched at ``issued_at`` for the key set we hold."""
        self._fresh_at = max(self._fresh_at, issued_at)
        self._confirmed_at = self._clock()
        if self._connected:
            self._degraded.clear()

    def _on_fresh(self, record: Freshness) -> None:
        was_live = self._is_live(self._clock())
        self._confirm(record.ts)
        if not was_live and self._is_live(self._clock()):
            self._dirty.set()
            logger.info("verifier live (fresh at %s)", record.ts)

    def _is_live(self, now: float | None = None) -> bool:
        """Following the stream, with a freshness record younger than the bound."""
        now = self._clock() if now is None else now
        return self._connected and now - self._fresh_at <= self._fresh_bound_s

    # -- follower callbacks ----------------------------------------------------------------

    def _on_redis_error(self, error: BaseException) -> None:
        if isinstance(error, MaxClientsReachedError):
            message = "maxclients: Redis refused the connection (max number of clients reached)"
        else:
            message = f"{type(error).__name__}: {error}"
        if message != self._redis_error:
            logger.warning("Redis error: %s", message, extra={"instance_id": self.instance_id})
        self._redis_error = message

    def _on_connected(self, connected: bool) -> None:
        # Called on every XREAD reply too: that is where a silent stream (no freshness record
        # within the bound) turns the verifier degraded and wakes the poller.
        changed = connected != self._connected
        self._connected = connected
        if connected:
            self._redis_error = None
        if connected and self._failure is not None:
            self._failure = None
            logger.warning("stream follower recovered", extra={"instance_id": self.instance_id})
        if self._is_live():
            self._degraded.clear()
        else:
            self._degraded.set()
        if not changed:
            return
        self._dirty.set()
        state = self._publish_state()
        logger.log(
            logging.INFO if connected else logging.WARNING,
            "verifier %s",
            state,
            extra={"version": self.keyset.version, "instance_id": self.instance_id},
        )

    def _on_applied(self, event: Event, now: float) -> None:
        self._last_event_ts = event.ts
        self._lag_s = max(0.0, now - event.ts)
        self._lag_gauge.set(self._lag_s)
        self._version_gauge.set(event.version)
        self._dirty.set()

    # -- health and presence ---------------------------------------------------------------

    def _state(self) -> State:
        if self._is_live():
            return "live"
        if self._clock() - self._confirmed_at > self._max_staleness_s:
            return "stale"
        return "failed" if self._failure is not None else "degraded"

    def _publish_state(self) -> State:
        state = self._state()
        self._metrics.set_state(self.issuer, state)
        return state

    def health(self) -> Health:
        """The verifier's state, key-set version, kids held with their states, and lag."""
        view = self.keyset.view
        return Health(
            state=self._publish_state(),
            version=view.version,
            epoch=view.epoch,
            kids=dict(view.states),
            lag_s=self._lag_s,
            last_event_at=self._last_event_ts,
            confirmed_at=self._confirmed_at if math.isfinite(self._confirmed_at) else None,
            instance_id=self.instance_id,
            restarts=self._restarts,
            failure=self._failure,
            heartbeat_error=self._presence.error if self._presence is not None else None,
            fresh_at=self._fresh_at if math.isfinite(self._fresh_at) else None,
            freshness_bound_s=self._fresh_bound_s,
            redis_error=self._redis_error,
        )

    def heartbeat_record(self) -> HeartbeatRecord:
        """The presence record this instance publishes."""
        view = self.keyset.view
        return HeartbeatRecord(
            instance_id=self.instance_id,
            service=self._service,
            host=socket.gethostname(),
            pid=os.getpid(),
            state=self._publish_state(),
            epoch=view.epoch,
            version=view.version,
            kids=dict(view.first_held),
            lag_ms=None if self._lag_s is None else round(self._lag_s * 1000, 3),
            last_event_ts=self._last_event_ts,
            updated_at=self._clock(),
        )
