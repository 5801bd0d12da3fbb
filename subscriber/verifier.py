"""``Verifier``: the subscriber's public API, a key cache kept warm by the issuer's stream.

::

    async with Verifier(issuer="https://id.example.com", audience="orders-api",
                        redis_url="redis://127.0.0.1:6379/0") as verifier:
        claims = verifier.verify(token)      # CPU only: no I/O, no await

Three background tasks keep the cache current: the stream follower (``follower.py``), a poller
of the signed snapshot that only polls while the verifier is not live, and the presence
heartbeat. Its states (``live``, ``degraded``, ``failed``, ``stale``) are described in
:mod:`subscriber.health` and decided by :mod:`subscriber.liveness`; what it knows and reports
about itself is kept by :mod:`subscriber.status`. Its settings are checked by
:mod:`subscriber.config`, and its key sources are wired by :mod:`subscriber.key_sources`.
"""

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import httpx
import redis.asyncio as aioredis
from prometheus_client import REGISTRY, CollectorRegistry
from redis.exceptions import RedisError

from . import clients, constants
from .clock import Clock, system_clock
from .config import StalePolicy, check_config
from .errors import InvalidToken, KeyNotFound, KeyNotUsable
from .follower import StreamFollower
from .health import Health
from .jwk import SUPPORTED_ALGS
from .jws import strict_json_object
from .key_sources import KeySources
from .keyset import KeySet
from .liveness import Liveness
from .metrics import Metrics, metrics_for
from .miss_hints import MissHints
from .presence import HeartbeatRecord, Presence, new_instance_id
from .redis_conn import RedisClients
from .refresher import JwksRefresher
from .status import VerifierStatus
from .supervisor import supervise
from .token_cache import TokenCache
from .verify import check_claims, verify_signature

logger = logging.getLogger(__name__)


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
        self._config = config = check_config(
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            typ=typ,
            redis_url=redis_url,
            has_redis=redis is not None,
            snapshot_url=snapshot_url,
            stream=stream,
            leeway_s=leeway_s,
            announcement_keys=announcement_keys,
            stale_policy=stale_policy,
            max_staleness_s=max_staleness_s,
            unknown_kid_cooldown_s=unknown_kid_cooldown_s,
            min_poll_interval_s=min_poll_interval_s,
            max_poll_interval_s=max_poll_interval_s,
            presence=presence,
            service=service,
            heartbeat_interval_s=heartbeat_interval_s,
            heartbeat_ttl_s=heartbeat_ttl_s,
            block_ms=block_ms,
            token_cache_size=token_cache_size,
            freshness_bound_s=freshness_bound_s,
            announcer=announcer,
            miss_hint_interval_s=miss_hint_interval_s,
            start_timeout_s=start_timeout_s,
        )
        self.issuer = issuer
        self.options = config.verify_options
        self._redis_url, self._redis = redis_url, redis
        self._clock = clock
        self._http = http_client
        # Written by the event loop, read by verify() on any thread: plain attributes (here
        # and in Liveness) whose single assignments are atomic.
        self._liveness = liveness = Liveness(
            clock,
            leeway_s=config.leeway_s,
            max_staleness_s=config.max_staleness_s,
            fixed_bound_s=config.freshness_bound_s,
        )
        # Bound once, so the hot path pays what it did when these were the verifier's own.
        self._is_live = liveness.is_live
        # inf under keep_verifying, so the staleness test costs verify() what it did.
        self._stale_after_s = config.max_staleness_s if config.fail_closed else math.inf
        self._metrics = metrics_for(registry)
        self._count = self._metrics.verifications.add
        self._valid = self._metrics.verifications.counter("ok")
        self.instance_id = new_instance_id()
        self.keyset = KeySet(
            issuer, TokenCache(config.token_cache_size, constants.token_cache_max_token_chars)
        )
        self._status = VerifierStatus(
            issuer=issuer,
            instance_id=self.instance_id,
            keyset=self.keyset,
            liveness=liveness,
            clock=clock,
            metrics=self._metrics,
        )
        # None when off, so the hot path pays one test for it.
        self._tokens = self.keyset.tokens if config.token_cache_size else None
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._own_redis: RedisClients | None = None
        self._own_http: httpx.AsyncClient | None = None
        self._presence: Presence | None = None
        self._refresher: JwksRefresher | None = None
        self._hints: MissHints | None = None

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
        try:
            await self._bootstrap()
        except BaseException:
            await self.aclose()
            raise

    async def _bootstrap(self) -> None:
        config, status = self._config, self._status
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
        sources = KeySources(
            config=config,
            issuer=self.issuer,
            keyset=self.keyset,
            clock=self._clock,
            metrics=self._metrics,
            liveness=self._liveness,
            http=self._http,
            redis=self._redis,
            instance_id=self.instance_id,
            spawn=self._spawn,
            after_adopt=status.after_adopt,
            on_change=status.dirty.set,
        )
        self._jwks, self._hints = sources.jwks, sources.hints
        self._refresher = refresher = sources.refresher
        self._follower: StreamFollower = await sources.follow(
            stream_redis,
            on_fresh=status.on_fresh,
            on_connected=status.on_connected,
            on_applied=status.on_applied,
            on_error=status.on_redis_error,
        )
        synced = await sources.first_sync()
        self._running = True
        status.on_connected(synced)
        follower, liveness = self._follower, self._liveness
        # A restarted follower resyncs first: the bootstrap's sync is only good once.
        self._supervise("follower", lambda restarts: follower.run(synced=synced and not restarts))
        self._supervise(
            "poller",
            lambda _: refresher.poll(
                liveness.degraded,
                self._is_live,
                lambda: liveness.confirmed_at,
                liveness.bound_s / 4,
            ),
        )
        if config.presence:
            self._presence = presence = Presence(
                self._redis, self.issuer, self.instance_id, self._clock, config.heartbeat_ttl_s
            )
            self._supervise(
                "heartbeat",
                lambda _: presence.run(
                    self.heartbeat_record, status.dirty, config.heartbeat_interval_s, self._metrics
                ),
            )
        logger.info(
            "verifier started (%s)",
            self.health().state,
            extra={"version": self.keyset.version, "instance_id": self.instance_id},
        )

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
            supervise(name, start, metrics=self._metrics, on_death=self._status.on_task_death), name
        )

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
            if now - self._liveness.confirmed_at > self._stale_after_s:
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

    # -- health and presence ---------------------------------------------------------------

    def health(self) -> Health:
        """The verifier's state, key-set version, kids held with their states, and lag."""
        presence = self._presence
        return self._status.health(presence.error if presence is not None else None)

    def heartbeat_record(self) -> HeartbeatRecord:
        """The presence record this instance publishes."""
        return self._status.heartbeat_record(self._config.service)
