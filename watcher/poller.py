"""The upstream poller: fetch on the schedule, diff against what was announced, report changes.

:class:`UpstreamPoller` owns one upstream. :meth:`~UpstreamPoller.poll` does one fetch and
returns the diff; :meth:`~UpstreamPoller.run` polls whenever :attr:`next_poll_at` comes;
:meth:`~UpstreamPoller.fetch_soon` is how a report of an unknown kid asks for an early fetch:
at most one per ``cooldown_s`` for this poller, shared with a poll already in flight, and never
inside a ``Retry-After`` or a backoff (never faster than the provider asks).
"""

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable

from subscriber.clock import Clock, system_clock

from . import constants
from .diff import KeySetDiff, KeySetTracker
from .schedule import PollPolicy, Response, next_delay_s
from .upstream import Fetch, UpstreamClient

__all__ = ["UpstreamPoller"]

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class UpstreamPoller:
    """Polls one upstream JWKS and diffs each set against the last.

    :param client: the upstream's HTTP edge.
    :param policy: floor, ceiling, jitter and backoff of the schedule.
    :param hold_s: how long a kid must stay absent before it is retired.
    :param cooldown_s: at most one early fetch (:meth:`fetch_soon`) per this many seconds.
    :param on_change: awaited with every non-empty diff, in order.
    :param clock: seconds since the epoch; injected in tests.
    :param sleep: awaited to wait ``n`` seconds in :meth:`run`; injected in tests.
    :param rng: the jitter source (seeded in tests).
    """

    def __init__(
        self,
        client: UpstreamClient,
        *,
        policy: PollPolicy | None = None,
        hold_s: float = constants.retire_hold_s,
        cooldown_s: float = constants.poll_floor_s,
        on_change: Callable[[KeySetDiff], Awaitable[None]] | None = None,
        clock: Clock = system_clock,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < cooldown_s < math.inf:
            raise ValueError(
                f"cooldown_s must be a positive number of seconds, the input is {cooldown_s!r}"
            )
        self.client = client
        self.policy = policy or PollPolicy()
        self.tracker = KeySetTracker(hold_s)
        self.cooldown_s = cooldown_s
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._in_flight: asyncio.Future[KeySetDiff] | None = None
        #: When the next scheduled poll is due (0: at once).
        self.next_poll_at = 0.0
        #: Before this, no request may go out at all (Retry-After, backoff).
        self.quiet_until = 0.0
        self.failures = 0
        self.last_fetch_at = -math.inf
        self.last: Fetch | None = None

    async def poll(self) -> KeySetDiff:
        """Fetch now (joining a fetch in flight), update the schedule, return the diff."""
        if self._in_flight is not None:
            return await asyncio.shield(self._in_flight)
        future: asyncio.Future[KeySetDiff] = asyncio.get_running_loop().create_future()
        self._in_flight = future
        try:
            diff = await self._poll()
            future.set_result(diff)
            return diff
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: joiners re-raise it, nobody else need
            raise
        finally:
            self._in_flight = None

    async def _poll(self) -> KeySetDiff:
        now = self._clock()
        self.last_fetch_at = now
        fetch = await self.client.fetch(now)
        self.last = fetch
        now = self._clock()
        if fetch.keys is None:
            self.failures += 1
            logger.warning(
                "upstream %s: %s (failure %d)", self.client.issuer, fetch.error, self.failures
            )
            response = Response(ok=False, retry_after_s=fetch.retry_after_s)
            diff = KeySetDiff()
        else:
            self.failures = 0
            response = Response(ok=True, fresh_s=fetch.fresh_s, retry_after_s=fetch.retry_after_s)
            diff = self.tracker.update(fetch.keys.keys, now)
        delay = next_delay_s(self.policy, response, self.failures, self._rng)
        self.next_poll_at = now + delay
        if not response.ok or response.retry_after_s:
            self.quiet_until = now + max(delay, response.retry_after_s or 0.0)
        else:
            self.quiet_until = now
        if diff and self._on_change is not None:
            await self._on_change(diff)
        return diff

    def may_fetch_early(self, now: float) -> bool:
        """Whether :meth:`fetch_soon` would fetch at ``now``."""
        return now >= self.quiet_until and now - self.last_fetch_at >= self.cooldown_s

    async def fetch_soon(self) -> KeySetDiff | None:
        """An early fetch, if allowed: joins one in flight; otherwise at most one per
        cooldown, and none while the provider asked us to wait. ``None`` when dropped."""
        if self._in_flight is not None:
            return await asyncio.shield(self._in_flight)
        if not self.may_fetch_early(self._clock()):
            return None
        return await self.poll()

    async def run(self) -> None:
        """Poll on the schedule until cancelled; a failed poll is logged, never fatal."""
        while True:
            wait = self.next_poll_at - self._clock()
            if wait > 0:
                await self._sleep(wait)
                continue
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                # on_change is the publisher's; its failure must not stop the polling.
                logger.exception("upstream %s: poll failed", self.client.issuer)
                self.next_poll_at = self._clock() + self.policy.floor_s
