"""Miss hints: how a live verifier of an upstream issuer tells the watcher about an unknown kid.

A verifier that follows the stream refuses a token with an unknown ``kid`` at once (no network
on the hot path). In upstream mode it also appends the kid to the issuer's hint stream
(``redis_keys.miss_hints``), at most once per ``interval_s`` per verifier, from a background
task: ``verify()`` never waits for Redis. The watcher that leads for this upstream reads the
stream and fetches the provider's key set early, at most once per its cooldown for the whole
fleet; a real new kid is then announced to every verifier at once.

A hint is a routing hint, nothing more: the watcher only ever announces what the provider's own
JWKS holds, so a forged hint costs at most one upstream fetch per cooldown.
"""

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import constants
from .clock import Clock
from .redis_keys import miss_hints

logger = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any], str], None]


class MissHints:
    """Rate-limited reporting of unknown kids for one verifier.

    :param interval_s: at most one hint per this many seconds.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        issuer: str,
        instance_id: str,
        clock: Clock,
        interval_s: float = constants.miss_hint_interval_s,
    ) -> None:
        self.redis = redis
        self.key = miss_hints(issuer)
        self.instance_id = instance_id
        self._clock = clock
        self.interval_s = interval_s
        self._guard = threading.Lock()
        self._last_at = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spawn: Spawn | None = None
        #: Hints written to Redis.
        self.sent = 0

    def bind(self, loop: asyncio.AbstractEventLoop, spawn: Spawn) -> None:
        """Where hints are written from (the verifier's loop and task set)."""
        self._loop, self._spawn = loop, spawn

    def unbind(self) -> None:
        self._loop = self._spawn = None

    def report(self, kid: str) -> None:
        """Report ``kid`` unless a hint went out within the interval. Any thread; never blocks."""
        now = self._clock()
        with self._guard:
            if now - self._last_at < self.interval_s:
                return
            self._last_at = now
        loop, spawn = self._loop, self._spawn
        if loop is None or spawn is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(spawn, self._send(kid), "miss-hint")

    async def _send(self, kid: str) -> None:
        fields: dict[Any, Any] = {"kid": kid, "instance": self.instance_id}
        try:
            await self.redis.xadd(self.key, fields, maxlen=constants.miss_hints_kept)
            self.sent += 1
        except (RedisError, OSError) as e:
            logger.info("miss hint for kid %s not written: %s", kid[:64], type(e).__name__)
