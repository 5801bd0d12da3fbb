"""A fenced Redis lease: one holder at a time per issuer, and a token that outlives it.

Taking the lease (``SET NX PX``) draws a fencing token from a counter that only grows
(``INCR``), in one script. Every commit the holder makes carries the token, and the commit
script (:mod:`issuer.store`) refuses it once a newer token exists, so a holder that paused
past its lease (GC, SIGSTOP, network) cannot write after its successor started. The issuer's
scheduler and the upstream watcher's replicas both elect their leader with it.
"""

import logging
from typing import Final

import redis.asyncio as aioredis

from subscriber import redis_keys

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


class FencedLease:
    """The lease of one issuer's key set (``keyherald:{tag}:lease``) and its fencing token.

    :param holder: this replica's name in the lease.
    :param ttl_s: lease lifetime; the holder must renew well within it.
    """

    def __init__(self, redis: aioredis.Redis, issuer: str, holder: str, ttl_s: float) -> None:
        if not ttl_s > 0:
            raise ValueError(f"the lease ttl must be greater than 0, the input is {ttl_s!r}")
        self.holder = holder
        self.ttl_ms = int(ttl_s * 1000)
        #: The fencing token while this replica holds the lease, else ``None``.
        self.token: int | None = None
        self._lease_key = redis_keys.scheduler_lease(issuer)
        self._fence_key = redis_keys.scheduler_fence(issuer)
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    @property
    def _value(self) -> str:
        return f"{self.holder}:{self.token}"

    async def ensure(self) -> bool:
        """Renew the lease if held, else try to take it. ``True`` while this replica leads."""
        if self.token is not None:
            if await self._renew(keys=[self._lease_key], args=[self._value, self.ttl_ms]):
                return True
            logger.warning("%s lost the lease (token %s)", self.holder, self.token)
            self.token = None
        token = await self._acquire(
            keys=[self._lease_key, self._fence_key], args=[self.holder, self.ttl_ms]
        )
        if token is None:
            return False
        self.token = int(text(token))
        logger.info(
            "%s leads with fencing token %s",
            self.holder,
            self.token,
            extra={"holder": self.holder, "fence": self.token},
        )
        return True

    async def release(self) -> None:
        """Give the lease up (on shutdown) so another replica takes over at once."""
        if self.token is None:
            return
        try:
            await self._release(keys=[self._lease_key], args=[self._value])
        except aioredis.RedisError as e:
            logger.warning("could not release the lease: %s", e)
        self.token = None
