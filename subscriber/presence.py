"""Verifier presence: a small heartbeat record per instance, so operators and the issuer can
see which verifiers hold which key (``docs/protocol.md``, "Verifier presence").

Per heartbeat, in one transaction::

    ZADD  keyherald:{<tag>}:verifiers       <expiry ms> <instance id>
    HSET  keyherald:{<tag>}:verifier-state  <instance id> <JSON record>

An instance is live while its score is in the future. Writers and readers both prune expired
members, so instances that died without saying goodbye disappear after one TTL.

An instance writes its own record when it starts and whenever its state changes; the periodic
refresh of every instance of a process (same Redis client, issuer and interval) is one script
call per interval for all of them, so a thousand idle verifiers do not cost a thousand
round trips every ``interval_s``.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .cancellation import raise_if_cancelled
from .clock import Clock
from .metrics import Metrics
from .redis_keys import verifier_index, verifier_states

logger = logging.getLogger(__name__)

# Atomic, so an instance that heartbeats between the read and the delete is never dropped.
_PRUNE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
if #expired > 0 then
    redis.call('ZREM', KEYS[1], unpack(expired))
    redis.call('HDEL', KEYS[2], unpack(expired))
end
return #expired
"""


# One command per heartbeat, atomic as the MULTI/EXEC of the three it replaces (an idle
# verifier's Redis traffic is mostly its heartbeat): prune, then list this instance.
_BEAT = (
    _PRUNE.replace("return #expired", "")
    + """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return #expired
"""
)


# The periodic refresh of many instances: ARGV[1] is now (ms), then (expiry, id, record)
# triples.
_BEAT_MANY = (
    _PRUNE.replace("return #expired", "")
    + """
for i = 2, #ARGV, 3 do
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end
return #expired
"""
)
#: Records per refresh call, so one call never carries an unbounded reply or argument list.
refresh_batch = 200


def new_instance_id() -> str:
    """A unique id for one verifier instance: host, pid, and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    """What one verifier instance reports about itself."""

    instance_id: str
    service: str | None
    host: str
    pid: int
    state: str
    epoch: str | None
    version: int
    #: kid -> seconds since the epoch when this instance first held the key.
    kids: Mapping[str, float]
    lag_ms: float | None
    last_event_ts: float | None
    updated_at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "instance_id": self.instance_id,
                "service": self.service,
                "host": self.host,
                "pid": self.pid,
                "state": self.state,
                "epoch": self.epoch,
                "version": self.version,
                "kids": dict(self.kids),
                "lag_ms": self.lag_ms,
                "last_event_ts": self.last_event_ts,
                "updated_at": self.updated_at,
            },
            separators=(",", ":"),
            sort_keys=True,
        )


class Presence:
    """Writes one instance's heartbeat.

    :param ttl_s: how long a heartbeat keeps the instance listed; refresh well within it.
    """

    def __init__(
        self, redis: aioredis.Redis, issuer: str, instance_id: str, clock: Clock, ttl_s: float
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"heartbeat ttl must be greater than 0, the input is {ttl_s!r}")
        self.redis = redis
        self.instance_id = instance_id
        self._index = verifier_index(issuer)
        self._states = verifier_states(issuer)
        self._clock = clock
        self._ttl_s = ttl_s
        self._beat = redis.register_script(_BEAT)  # EVALSHA, EVAL once if the script is new
        #: Why the last heartbeat was not written, or ``None`` once one is.
        self.error: str | None = None

    async def run(
        self,
        record: Callable[[], HeartbeatRecord],
        changed: asyncio.Event,
        interval_s: float,
        metrics: Metrics,
    ) -> None:
        """Beat now and whenever ``changed`` is set, and be refreshed every ``interval_s``
        with the process's other instances (:class:`_Refresher`), until cancelled."""
        refresher = _Refresher.join(self, record, metrics, interval_s)
        try:
            while True:
                changed.clear()
                try:
                    await self.beat(record())
                except (RedisError, OSError) as e:
                    self._failed(e, metrics)
                else:
                    self._written()
                raise_if_cancelled()
                await changed.wait()
        finally:
            await refresher.leave(self)

    def _written(self) -> None:
        if self.error is not None:
            logger.warning("heartbeat written again", extra={"instance_id": self.instance_id})
            self.error = None

    def _expiry_ms(self) -> int:
        return int(self._clock() * 1000) + int(self._ttl_s * 1000)

    def _failed(self, error: BaseException, metrics: Metrics) -> None:
        # Warned once per outage, not per beat: a verifier pointed at a read-only replica
        # would otherwise log every few seconds. The issuer cannot see this instance meanwhile.
        metrics.heartbeat_failures.inc()
        reason = f"{type(error).__name__}: {error}"[:200]
        if self.error is None:
            logger.warning(
                "heartbeat not written (%s): `keyherald status` and the issuer's confirmed gate "
                "cannot see this verifier; give it a writable Redis (not a read-only replica)",
                reason,
                extra={"instance_id": self.instance_id},
            )
        self.error = reason

    async def beat(self, record: HeartbeatRecord) -> None:
        """Publish ``record`` with a fresh expiry and prune expired instances."""
        now_ms = int(self._clock() * 1000)
        expires_ms = now_ms + int(self._ttl_s * 1000)
        await self._beat(
            keys=[self._index, self._states],
            args=[now_ms, expires_ms, self.instance_id, record.to_json()],
        )

    async def leave(self) -> None:
        """Remove this instance's record (on a clean shutdown)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._index, self.instance_id)
            pipe.hdel(self._states, self.instance_id)
            await pipe.execute()


class _Refresher:
    """Refreshes, every ``interval_s``, the heartbeats of every instance of a process that
    shares a Redis client, an issuer and the interval: one script call per
    :data:`refresh_batch` instances."""

    _all: dict[tuple[Any, ...], "_Refresher"] = {}

    def __init__(self, key: tuple[Any, ...], presence: "Presence", interval_s: float) -> None:
        self._key = key
        self._interval_s = interval_s
        self._index, self._states = presence._index, presence._states
        self._script = presence.redis.register_script(_BEAT_MANY)
        self._members: dict[Presence, tuple[Callable[[], HeartbeatRecord], Metrics]] = {}
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="keyherald-heartbeats"
        )

    @classmethod
    def join(
        cls,
        presence: "Presence",
        record: Callable[[], HeartbeatRecord],
        metrics: Metrics,
        interval_s: float,
    ) -> "_Refresher":
        key = (asyncio.get_running_loop(), id(presence.redis), presence._index, interval_s)
        refresher = cls._all.get(key)
        if refresher is None:
            refresher = cls._all[key] = cls(key, presence, interval_s)
        refresher._members[presence] = (record, metrics)
        return refresher

    async def leave(self, presence: "Presence") -> None:
        self._members.pop(presence, None)
        if self._members or self._all.get(self._key) is not self:
            return
        del self._all[self._key]
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            members = list(self._members.items())
            for start in range(0, len(members), refresh_batch):
                await self._refresh(members[start : start + refresh_batch])

    async def _refresh(
        self, chunk: list[tuple["Presence", tuple[Callable[[], HeartbeatRecord], Metrics]]]
    ) -> None:
        if not chunk:
            return
        args: list[Any] = [int(chunk[0][0]._clock() * 1000)]
        for presence, (record, _) in chunk:
            args += [presence._expiry_ms(), presence.instance_id, record().to_json()]
        try:
            await self._script(keys=[self._index, self._states], args=args)
        except (RedisError, OSError) as e:
            raise_if_cancelled()
            for presence, (_, metrics) in chunk:
                presence._failed(e, metrics)
        else:
            for presence, _ in chunk:
                presence._written()


async def live_verifiers(redis: aioredis.Redis, issuer: str, now: float) -> list[dict[str, Any]]:
    """The heartbeat records of instances whose heartbeat has not expired at ``now``.

    Expired members are pruned on the way, as the protocol asks readers to.
    """
    index, states = verifier_index(issuer), verifier_states(issuer)
    now_ms = int(now * 1000)
    await redis.eval(_PRUNE, 2, index, states, now_ms)
    live = [
        m
        for m in await redis.zrangebyscore(index, f"({now_ms}", "+inf")
        if not isinstance(m, tuple | list)
    ]
    if not live:
        return []
    raw = await redis.hmget(states, live)
    return [json.loads(value) for value in raw if value is not None]
