"""One upstream, watched by a fleet of watcher replicas: the leader polls and announces.

:class:`UpstreamWatch` ties the pieces together:

- the **lease** (:class:`issuer.lease.FencedLease`, keyed by the upstream issuer): one replica
  polls the upstream for the whole fleet; every commit carries its fencing token, so a
  replica that paused past its lease writes nothing;
- the **poller** (:class:`~watcher.poller.UpstreamPoller`): the polite schedule; each diff it
  reports is committed by the **ledger** (:class:`~watcher.ledger.UpstreamLedger`) as signed,
  chained events on the upstream's stream, followed by a signed freshness record; freshness
  records also go out every ``freshness_interval_s``;
- **miss hints**: live verifiers that meet a well-formed token with an unknown kid append the
  kid to ``redis_keys.miss_hints(issuer)``. The leader blocks on that stream between rounds,
  so a hint is read at once; a kid it has not announced makes it fetch early, at most once
  per ``cooldown_s`` for the whole fleet and never inside a ``Retry-After``. A hint that comes
  inside the cooldown is remembered and answered when the cooldown ends, so a flood of random
  kids costs one upstream fetch per cooldown and delays a real new key by at most one
  cooldown.

A new leader seeds the tracker with the keys the store holds (their retire holds start over,
which only delays a retirement) and polls at once.
"""

import asyncio
import logging
import math
import os
import random
import socket
import uuid
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from issuer.errors import LeaseLost, StoreError
from issuer.lease import FencedLease
from subscriber import redis_keys
from subscriber.cancellation import raise_if_cancelled
from subscriber.clock import Clock, system_clock

from . import constants
from .diff import KeySetDiff
from .ledger import UpstreamLedger
from .poller import UpstreamPoller
from .schedule import PollPolicy
from .upstream import UpstreamClient

__all__ = ["UpstreamWatch"]

logger = logging.getLogger(__name__)

#: After an unexpected error in a round, wait this long (a Redis outage is not a busy loop).
ERROR_BACKOFF_S: Final = 1.0
#: Hints read per XREAD; the rest wait for the next read (they all say the same thing).
HINTS_PER_READ: Final = 256


def default_holder() -> str:
    """A replica's name in the lease: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class UpstreamWatch:
    """Polls one upstream while this replica holds its lease, and announces what changes.

    :param ledger: the upstream's announced key set (owns the Redis client it was given).
    :param client: the upstream's HTTP edge.
    :param policy: the poll schedule's floor, ceiling, jitter and backoff.
    :param hold_s: how long a kid must stay absent upstream before it is retired.
    :param cooldown_s: at most one early (hinted) fetch per this many seconds, fleet-wide.
    :param lease_ttl_s: the leader's lease; a dead leader is replaced after it.
    :param tick_s: longest wait between rounds (lease renewal, due polls, freshness).
    :raises ValueError: a setting that cannot work, named with its value.
    """

    def __init__(
        self,
        *,
        ledger: UpstreamLedger,
        client: UpstreamClient,
        policy: PollPolicy | None = None,
        hold_s: float = constants.retire_hold_s,
        cooldown_s: float = constants.poll_floor_s,
        lease_ttl_s: float = 10.0,
        tick_s: float = 1.0,
        holder: str | None = None,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        if not lease_ttl_s > 2 * tick_s > 0:
            raise ValueError(f"lease_ttl_s={lease_ttl_s:g} must exceed 2 * tick_s={tick_s:g} > 0")
        if client.issuer != ledger.issuer:
            raise ValueError(f"client issuer {client.issuer!r} != ledger {ledger.issuer!r}")
        self.ledger = ledger
        self.issuer = ledger.issuer
        self.redis: aioredis.Redis = ledger.redis
        self.clock = clock
        self.tick_s = tick_s
        self.lease = FencedLease(self.redis, self.issuer, holder or default_holder(), lease_ttl_s)
        self.poller = UpstreamPoller(
            client,
            policy=policy,
            hold_s=hold_s,
            cooldown_s=cooldown_s,
            on_change=self._announce,
            clock=clock,
            rng=rng,
        )
        self.hints_key = redis_keys.miss_hints(self.issuer)
        self.leading = False
        #: When the oldest unanswered hint (of a kid not announced) arrived.
        self.hinted_at: float | None = None
        self.hints_read = 0
        self.hinted_fetches = 0
        self._hint_id = "0-0"
        self._fresh_at = -math.inf
        self._reannounce = False
        #: kid -> when this replica first saw it upstream (for time-to-usable figures).
        self.seen_at: dict[str, float] = {}

    # -- one round -------------------------------------------------------------------------

    async def run_once(self) -> bool:
        """Hold the lease, poll when due (or when a hint may be answered), publish freshness
        when due. ``True`` while this replica leads."""
        if not await self.lease.ensure():
            if self.leading:
                logger.warning("watcher of %s lost the lease", self.issuer)
            self.leading = False
            return False
        if not self.leading:
            await self._take_over()
        try:
            if self._reannounce:
                await self._announce_again()
            now = self.clock()
            poller = self.poller
            if now >= poller.next_poll_at:
                await poller.poll()
            elif self.hinted_at is not None and poller.may_fetch_early(now):
                self.hinted_fetches += 1
                await poller.fetch_soon()
            if self.hinted_at is not None and poller.last_fetch_at >= self.hinted_at:
                self.hinted_at = None
            if not self.clock() - self._fresh_at < self.ledger.freshness_interval_s:
                await self._fresh()
        except LeaseLost:
            logger.warning("watcher of %s was fenced out", self.issuer)
            self.leading = False
            self.lease.token = None
            return False
        return True

    async def _take_over(self) -> None:
        self.poller.tracker.current = await self.ledger.usable_keys()
        self.poller.tracker.absent_since.clear()
        self.poller.next_poll_at = 0.0
        # From the newest hint on: older ones were for the previous leader.
        newest: Any = await self.redis.xrevrange(self.hints_key, count=1)
        self._hint_id = _text(newest[0][0]) if newest else "0-0"
        self.hinted_at = None
        self.leading = True
        logger.info(
            "watching %s (%d keys announced)",
            self.issuer,
            len(self.poller.tracker.current),
            extra={"issuer": self.issuer, "fence": self.lease.token},
        )

    async def _announce(self, diff: KeySetDiff) -> None:
        for key in diff.added:
            self.seen_at.setdefault(key.kid, self.clock())
        try:
            applied = await self.ledger.announce(diff, fence=self.lease.token)
        except BaseException:
            # The tracker already counts the diff as announced: rebuild it from the store.
            self._reannounce = True
            raise
        if applied is not None:
            await self._fresh()

    async def _announce_again(self) -> None:
        """After a failed commit: diff the last upstream set against what the store holds."""
        self.poller.tracker.current = await self.ledger.usable_keys()
        self._reannounce = False
        last = self.poller.last
        if last is not None and last.keys is not None:
            diff = self.poller.tracker.update(last.keys.keys, self.clock())
            if diff:
                await self._announce(diff)

    async def _fresh(self) -> None:
        await self.ledger.publish_freshness()
        self._fresh_at = self.clock()

    # -- hints -----------------------------------------------------------------------------

    async def read_hints(self, block_s: float) -> int:
        """Wait up to ``block_s`` for miss hints; note any of a kid not announced. Returns how
        many hints were read."""
        block_ms = max(1, int(block_s * 1000))
        reply: Any = await self.redis.xread(
            {self.hints_key: self._hint_id}, count=HINTS_PER_READ, block=block_ms
        )
        if not reply:
            return 0
        pairs = reply.items() if isinstance(reply, dict) else reply
        count = 0
        known = self.poller.tracker.current
        for _, entries in pairs:
            for entry_id, fields in entries:
                self._hint_id = _text(entry_id)
                count += 1
                raw = fields.get(b"kid", fields.get("kid"))
                kid = _text(raw) if raw is not None else None
                if kid is not None and kid not in known and self.hinted_at is None:
                    self.hinted_at = self.clock()
        self.hints_read += count
        return count

    def wait_s(self) -> float:
        """How long the leader may wait before its next round."""
        now = self.clock()
        due = [self.poller.next_poll_at, self._fresh_at + self.ledger.freshness_interval_s]
        if self.hinted_at is not None:
            due.append(
                max(self.poller.quiet_until, self.poller.last_fetch_at + self.poller.cooldown_s)
            )
        return max(0.001, min(self.tick_s, *(at - now for at in due)))

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Rounds until cancelled; errors are logged and retried, never fatal."""
        try:
            while True:
                try:
                    if await self.run_once():
                        await self.read_hints(self.wait_s())
                    else:
                        await asyncio.sleep(self.tick_s)
                except (RedisError, StoreError, OSError) as e:
                    logger.error("watcher round for %s failed: %s", self.issuer, e)
                    await asyncio.sleep(ERROR_BACKOFF_S)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("watcher round for %s failed unexpectedly", self.issuer)
                    await asyncio.sleep(ERROR_BACKOFF_S)
                # redis-py can turn a cancellation that lands in a blocking read into an empty
                # reply; without this check the loop would swallow the shutdown and run on.
                raise_if_cancelled()
        finally:
            await asyncio.shield(self.lease.release())

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` reports for this upstream."""
        poller, client = self.poller, self.poller.client
        last = poller.last
        return {
            "issuer": self.issuer,
            "leading": self.leading,
            "holder": self.lease.holder,
            "jwks_uri": client.jwks_url,
            "keys": sorted(poller.tracker.current),
            "upstream_requests": client.requests,
            "not_modified": client.not_modified,
            "failures": poller.failures,
            "last_status": last.status if last is not None else None,
            "last_error": last.error if last is not None else None,
            "hints_read": self.hints_read,
            "hinted_fetches": self.hinted_fetches,
        }
