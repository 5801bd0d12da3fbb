"""The loop that applies due transitions, safe with several issuer replicas.

One replica at a time holds a Redis lease (``SET NX PX``); taking it draws a fencing token from
a counter that only grows (``INCR``). Every commit the holder makes carries the token, and the
commit script refuses it once a newer token exists, so a leader that paused past its lease
(GC, SIGSTOP, network) cannot write after its successor started. Independently, each commit is a
compare-and-set on the key-set ``version``: a transition is applied once even if two writers
race, and it is never lost, because what is due is recomputed from the stored state by whoever
holds the lease next.
"""

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from typing import Final

import redis.asyncio as aioredis

from subscriber import redis_keys

from .authority import Applied, Authority
from .errors import LeaseLost, StoreError
from .store import text

logger = logging.getLogger(__name__)

# Taking the lease and drawing the token is one atomic step: a token drawn by a replica that
# then fails to get the lease would otherwise fence out the live leader.
ACQUIRE_SCRIPT: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
  return token
end
return false
"""
RENEW_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Back-off after an unexpected error in the loop, so a Redis outage is not a busy loop.
ERROR_BACKOFF_S: Final = 1.0
#: Longest wait for the lease release at shutdown; the lease expires on its own anyway.
RELEASE_TIMEOUT_S: Final = 2.0


def _raise_if_cancelling() -> None:
    # A cancellation that lands while redis-py waits under its own timeout can come out as a
    # (caught, retried) timeout error instead of CancelledError; without this check the loop
    # would swallow the shutdown and run on.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Scheduler:
    """Applies :meth:`Authority.tick` while holding the lease.

    :param holder: this replica's name in the lease (default: host, pid and a random suffix).
    :param lease_ttl_s: lease lifetime; must exceed twice ``tick_interval_s`` so a live
        leader renews in time.
    """

    def __init__(
        self,
        authority: Authority,
        *,
        holder: str | None = None,
        lease_ttl_s: float = 10.0,
        tick_interval_s: float = 1.0,
    ) -> None:
        if lease_ttl_s <= 2 * tick_interval_s:
            raise ValueError(
                f"lease_ttl_s={lease_ttl_s:g} must exceed 2 * tick_interval_s={tick_interval_s:g}"
            )
        self.authority = authority
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.tick_interval_s = tick_interval_s
        self.token: int | None = None
        self._fresh_at = -math.inf
        redis: aioredis.Redis = authority.redis
        self._lease_key = redis_keys.scheduler_lease(authority.issuer)
        self._fence_key = redis_keys.scheduler_fence(authority.issuer)
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    @property
    def _lease_value(self) -> str:
        return f"{self.holder}:{self.token}"

    async def ensure_lease(self) -> bool:
        """Renew the lease if held, else try to take it. ``True`` while this replica leads."""
        if self.token is not None:
            if await self._renew(
                keys=[self._lease_key], args=[self._lease_value, self.lease_ttl_ms]
            ):
                return True
            logger.warning("scheduler %s lost the lease (token %s)", self.holder, self.token)
            self.token = None
        token = await self._acquire(
            keys=[self._lease_key, self._fence_key], args=[self.holder, self.lease_ttl_ms]
        )
        if token is None:
            return False
        self.token = int(text(token))
        logger.info(
            "scheduler %s leads with fencing token %s",
            self.holder,
            self.token,
            extra={"holder": self.holder, "fence": self.token},
        )
        return True

    async def run_once(self) -> list[Applied]:
        """One round: hold the lease, apply what is due, and publish a freshness record when
        one is due. Followers do nothing."""
        if not await self.ensure_lease():
            return []
        try:
            applied = await self.authority.tick(fence=self.token)
        except LeaseLost:
            logger.warning("scheduler %s was fenced out (token %s)", self.holder, self.token)
            self.token = None
            return []
        now = self.authority.clock()
        if applied or not now - self._fresh_at < self.authority.freshness_interval_s:
            await self.authority.publish_freshness()
            self._fresh_at = now
        return applied

    async def run(self) -> None:
        """Loop until cancelled; errors are logged and retried, never fatal."""
        try:
            while True:
                try:
                    await self.run_once()
                except (aioredis.RedisError, StoreError, OSError) as e:
                    logger.error("scheduler round failed: %s", e)
                    await asyncio.sleep(ERROR_BACKOFF_S)
                except Exception:
                    # A loop that died here would stop every rotation without a sound; log it
                    # loudly and keep going (another replica may also take over the lease).
                    logger.exception("scheduler round failed unexpectedly")
                    await asyncio.sleep(ERROR_BACKOFF_S)
                _raise_if_cancelling()
                await asyncio.sleep(self.tick_interval_s)
        finally:
            # Shielded and bounded: shutdown must neither skip the release nor hang on it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELEASE_TIMEOUT_S):
                    await asyncio.shield(self.release())

    async def release(self) -> None:
        """Give the lease up (on shutdown) so another replica takes over at once."""
        if self.token is None:
            return
        try:
            await self._release(keys=[self._lease_key], args=[self._lease_value])
        except aioredis.RedisError as e:
            logger.warning("could not release the scheduler lease: %s", e)
        self.token = None
