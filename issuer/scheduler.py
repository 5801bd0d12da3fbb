"""The loop that applies due transitions, safe with several issuer replicas.

One replica at a time holds the fenced lease (:class:`~issuer.lease.FencedLease`). Every commit
the holder makes carries its fencing token, and the commit script refuses it once a newer token
exists, so a leader that paused past its lease (GC, SIGSTOP, network) cannot write after its
successor started. Independently, each commit is a
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

from .authority import Applied, Authority
from .errors import LeaseLost, StoreError
from .lease import FencedLease

logger = logging.getLogger(__name__)

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
        self.lease = FencedLease(authority.redis, authority.issuer, self.holder, lease_ttl_s)
        self._fresh_at = -math.inf

    @property
    def token(self) -> int | None:
        """The fencing token while this replica leads."""
        return self.lease.token

    @token.setter
    def token(self, value: int | None) -> None:
        self.lease.token = value

    async def ensure_lease(self) -> bool:
        """Renew the lease if held, else try to take it. ``True`` while this replica leads."""
        return await self.lease.ensure()

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
        await self.lease.release()
