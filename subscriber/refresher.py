"""Every snapshot fetch of one verifier: shared in flight, rate-limited when a token asks for
it, and polled while the stream is unreachable or silent.

What is fetched is the issuer's signed key-set snapshot (:mod:`subscriber.history`): it is
verified against the announcement keys, refused if expired, and adopted only if it does not
take the key set back (:meth:`KeySet.replace_from_snapshot`).

Three callers, three rules:

- a **resync** (the follower) fetches at once, and never joins a fetch that started before it
  read the stream head;
- an **unknown kid while degraded** (the hot path, any thread) only *requests* a refresh:
  at most one in flight and one per cooldown; requests inside the cooldown are dropped, never
  queued and never push the cooldown back, so a flood of random kids cannot delay the refresh
  a real new key needs, and ``verify()`` never waits for it;
- the **poller** fetches every ``max-age`` (clamped, minus jitter) while degraded.
"""

import asyncio
import contextlib
import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .cancellation import raise_if_cancelled
from .clock import Clock
from .errors import EventError, FetchError
from .history import KeySetSnapshot, parse_snapshot
from .jwks_client import JwksClient, poll_delay_s
from .keyset import KeySet
from .metrics import Metrics

logger = logging.getLogger(__name__)

#: Schedules a coroutine as a tracked background task (on the verifier's loop).
Spawn = Callable[[Coroutine[Any, Any, Any], str], None]


class JwksRefresher:
    """Fetches the signed snapshot into a :class:`KeySet`.

    :param announcement_keys: the keys a snapshot must be signed by (read at each fetch).
    :param reload_announcement_keys: asked once when a snapshot is signed by a key we do not
        hold (a rebuilt store may come with a new announcement key); returns whether the keys
        changed. Pinned keys never change.
    :param after_adopt: awaited after each successful fetch with ``(now, changed, snapshot)``.
    :param fallback: awaited with the trigger when a refresh that need not be a resync cannot
        get a snapshot (upstream mode: the provider's own JWKS); returns whether keys changed.
    """

    def __init__(
        self,
        *,
        client: JwksClient,
        keyset: KeySet,
        clock: Clock,
        metrics: Metrics,
        cooldown_s: float,
        poll_bounds_s: tuple[float, float],
        after_adopt: Callable[[float, bool, KeySetSnapshot], Awaitable[None]],
        announcement_keys: Callable[[], Mapping[str, Ed25519PublicKey]],
        reload_announcement_keys: Callable[[], Awaitable[bool]],
        leeway_s: float,
        fallback: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.client = client
        self.keyset = keyset
        self._clock = clock
        self._metrics = metrics
        self._cooldown_s = cooldown_s
        self._poll_bounds_s = poll_bounds_s
        self._after_adopt = after_adopt
        self._announcement_keys = announcement_keys
        self._reload_announcement_keys = reload_announcement_keys
        self._leeway_s = leeway_s
        self._fallback = fallback
        self._rng = random.Random()
        self._guard = threading.Lock()
        #: A requested refresh is scheduled or running.
        self.requested = False
        self._last_request_at = -math.inf
        self._inflight: asyncio.Task[bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spawn: Spawn | None = None
        #: ``max-age`` of the last JWKS response, if it had one.
        self.max_age_s: float | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, spawn: Spawn) -> None:
        """Where requested refreshes run (the verifier's loop and task set)."""
        self._loop, self._spawn = loop, spawn

    def unbind(self) -> "asyncio.Task[bool] | None":
        """Stop accepting requests; returns the fetch still in flight, for the caller to end."""
        self._loop = self._spawn = None
        return self._inflight

    def request(self, trigger: str) -> None:
        """Ask for a refresh in the background. Callable from any thread; never blocks."""
        now = self._clock()
        with self._guard:
            if self.requested or now - self._last_request_at < self._cooldown_s:
                return
            self.requested = True
            self._last_request_at = now
        loop, spawn = self._loop, self._spawn
        if loop is None or spawn is None or loop.is_closed():
            self.requested = False
            return
        loop.call_soon_threadsafe(spawn, self._requested(trigger), "refresh")

    async def _requested(self, trigger: str) -> None:
        try:
            await self.refresh(trigger)
        except FetchError as e:
            logger.warning("JWKS refresh (%s) failed: %s", trigger, e)
        finally:
            self.requested = False

    async def refresh(self, trigger: str, *, fresh: bool = False) -> bool:
        """Fetch the JWKS and adopt it; concurrent callers share one request.

        :param fresh: the fetch must start after this call (a resync read the stream head
            first, so a fetch already in flight may predate events it must cover).
        :returns: whether the key set changed.
        :raises FetchError: the fetch failed or the document is unusable.
        """
        inflight = self._inflight
        if fresh and inflight is not None and not inflight.done():
            await asyncio.gather(asyncio.shield(inflight), return_exceptions=True)
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch_and_adopt(trigger))
        try:
            return await asyncio.shield(self._inflight)
        except FetchError as e:
            if self._fallback is None or fresh:
                raise
            logger.warning("signed snapshot unavailable (%s): %s", trigger, e)
            return await self._fallback(trigger)

    async def _fetch_and_adopt(self, trigger: str) -> bool:
        try:
            response = await self.client.fetch_snapshot()
        except FetchError:
            self._metrics.child(self._metrics.jwks_fetches, trigger, "error").inc()
            raise
        self._metrics.child(self._metrics.jwks_fetches, trigger, "ok").inc()
        snapshot = await self._verified(response.token)
        now = self._clock()
        changed = self.keyset.replace_from_snapshot(snapshot, now)
        self.max_age_s = response.max_age_s
        await self._after_adopt(now, changed, snapshot)
        if changed:
            logger.info(
                "key set adopted from the signed snapshot (%s)",
                trigger,
                extra={"version": self.keyset.version},
            )
        return changed

    async def _verified(self, token: str) -> KeySetSnapshot:
        for attempt in range(2):
            try:
                return parse_snapshot(
                    token,
                    self._announcement_keys(),
                    issuer=self.keyset.issuer,
                    now=self._clock(),
                    leeway_s=self._leeway_s,
                )
            except EventError as e:
                self._metrics.child(self._metrics.events_rejected, e.reason).inc()
                if attempt or e.reason != "forged_event" or not await self._reload():
                    raise FetchError(f"snapshot refused: {e} ({e.reason})") from e
        raise AssertionError("unreachable")

    async def _reload(self) -> bool:
        try:
            return await self._reload_announcement_keys()
        except FetchError as e:
            logger.warning("announcement keys could not be reloaded: %s", e)
            return False

    async def poll(
        self,
        degraded: asyncio.Event,
        is_live: Callable[[], bool],
        confirmed_at: Callable[[], float],
        check_s: float,
    ) -> None:
        """Poll while not live, every ``max-age`` (clamped, minus jitter).

        The first poll of an outage is due one interval after the keys were last confirmed
        (by a freshness record or a fetch), not after the outage was noticed: the issuer's
        lead only covers a key set at most ``max-age`` old.

        Liveness is looked at every ``check_s`` too, not only when ``degraded`` is set: a
        stream that stays connected but falls silent (no freshness record) is not live, and
        neither is one whose follower died.
        """
        lo, hi = self._poll_bounds_s
        first = True
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(check_s):
                    await degraded.wait()
            if is_live():
                first = True
                continue
            delay = poll_delay_s(self.max_age_s, self._rng, min_s=lo, max_s=hi)
            if first:
                delay = max(0.0, min(delay, confirmed_at() + delay - self._clock()))
            first = False
            await asyncio.sleep(delay)
            if is_live():
                first = True
                continue
            try:
                await self.refresh("poll")
            except FetchError as e:
                logger.warning("JWKS poll failed: %s", e)
            raise_if_cancelled()
