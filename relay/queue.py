"""Per-partner delivery state in Redis: ordered queues, head retry state, leases, history.

Keys (all under the issuer's hash-tag, see ``relay_key``)::

    queue:<partner>     ZSET  score = key-set version, member = JSON item (event + webhook id)
    state:<partner>     HASH  delivered (highest version the partner holds), epoch,
                              head / attempts / next_at (retry state of the queue head),
                              failing_since
    lease:<partner>     STRING replica id, PX; the one replica delivering to this partner
    attempts:<partner>  STREAM one entry per attempt (capped)
    dead                STREAM exhausted deliveries and poison stream entries (capped)

A queue is consumed strictly from its lowest version: a head that keeps failing blocks every
newer item for that partner, which is what keeps delivery in version order across replicas.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from subscriber.events import Event
from subscriber.redis_keys import event_stream, relay_key

from . import constants

logger = logging.getLogger(__name__)


def text(value: object) -> str:
    """A Redis reply value as text (replies are bytes unless ``decode_responses=True``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


# Fan-out of one verified stream entry, and its XACK, in one step: either every partner queue
# has the event or the entry stays pending and is retried. An item at or below a partner's
# ``delivered`` mark is skipped so that a re-processed entry is not delivered twice; an event
# of another epoch (the key store was rebuilt) drops that partner's old-epoch queue first.
_FAN_OUT = """
local version = tonumber(ARGV[3])
for i = 2, #KEYS, 2 do
  local state = KEYS[i + 1]
  local epoch = redis.call('HGET', state, 'epoch')
  if epoch and epoch ~= ARGV[5] then
    redis.call('DEL', KEYS[i])
    redis.call('HSET', state, 'delivered', 0)
    redis.call('HDEL', state, 'head', 'attempts', 'next_at')
  end
  redis.call('HSET', state, 'epoch', ARGV[5])
  local delivered = tonumber(redis.call('HGET', state, 'delivered') or '0')
  if version > delivered then
    redis.call('ZADD', KEYS[i], 'NX', version, ARGV[4])
  end
end
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""

# Success of the head: drop it (and, when collapsing, every item the delivered full state
# covers), raise the delivered mark, clear the retry state. Returns how many items were removed.
_COMPLETE = """
local removed
if ARGV[3] == '1' then
  removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
else
  removed = redis.call('ZREM', KEYS[1], ARGV[1])
end
local delivered = tonumber(redis.call('HGET', KEYS[2], 'delivered') or '0')
if tonumber(ARGV[2]) > delivered then
  redis.call('HSET', KEYS[2], 'delivered', ARGV[2])
end
redis.call('HDEL', KEYS[2], 'head', 'attempts', 'next_at', 'failing_since')
return removed
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Item:
    """One queued delivery: a verified event, the signed JWS, the stable webhook id."""

    version: int
    webhook_id: str
    event: Mapping[str, Any]
    jws: str

    @property
    def member(self) -> str:
        return json.dumps(
            {"v": self.version, "id": self.webhook_id, "event": self.event, "jws": self.jws},
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_member(cls, raw: bytes | str) -> "Item":
        d = json.loads(raw)
        return cls(version=d["v"], webhook_id=d["id"], event=d["event"], jws=d["jws"])

    @classmethod
    def of(cls, event: Event, jws: str, suffix: str = "") -> "Item":
        """The item for ``event``; its webhook id derives from the event id, so every replica
        and every retry sends the same one (a replay adds ``suffix`` to get a new one)."""
        return cls(event.version, f"msg_{event.event_id}{suffix}", event.payload(), jws)


@dataclass(frozen=True, slots=True)
class HeadState:
    """Retry state of a queue's head item."""

    attempts: int
    next_at: float | None
    failing_since: float | None
    delivered: int


class DeliveryStore:
    """Redis operations on partner queues for one issuer."""

    def __init__(self, redis: aioredis.Redis, issuer: str) -> None:
        self._redis = redis
        self._issuer = issuer
        self._stream = event_stream(issuer)
        self.dead_key = relay_key(issuer, "dead")
        self._fan_out = redis.register_script(_FAN_OUT)
        self._complete = redis.register_script(_COMPLETE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def queue_key(self, partner_id: str) -> str:
        return relay_key(self._issuer, f"queue:{partner_id}")

    def state_key(self, partner_id: str) -> str:
        return relay_key(self._issuer, f"state:{partner_id}")

    def attempts_key(self, partner_id: str) -> str:
        return relay_key(self._issuer, f"attempts:{partner_id}")

    def lease_key(self, partner_id: str) -> str:
        return relay_key(self._issuer, f"lease:{partner_id}")

    async def fan_out(
        self, item: Item, epoch: str, partner_ids: Sequence[str], *, group: str, entry_id: str
    ) -> None:
        """Queue ``item`` for each partner and acknowledge the stream entry, atomically."""
        keys = [self._stream]
        for pid in partner_ids:
            keys += [self.queue_key(pid), self.state_key(pid)]
        await self._fan_out(keys=keys, args=[group, entry_id, item.version, item.member, epoch])

    async def enqueue(self, partner_id: str, items: Sequence[Item]) -> int:
        """Queue ``items`` for one partner, ignoring the delivered mark (admin replay)."""
        if not items:
            return 0
        mapping = {i.member: i.version for i in items}
        return int(await self._redis.zadd(self.queue_key(partner_id), mapping))  # type: ignore[arg-type]

    async def head(self, partner_id: str) -> Item | None:
        """The lowest-version item of the partner's queue."""
        # Without WITHSCORES the reply is a plain list of members.
        got = cast("list[bytes]", await self._redis.zrange(self.queue_key(partner_id), 0, 0))
        return Item.from_member(got[0]) if got else None

    async def depth(self, partner_id: str) -> int:
        return int(await self._redis.zcard(self.queue_key(partner_id)))

    async def state(self, partner_id: str, head: Item) -> HeadState:
        """Retry state; counters recorded for another head item read as a fresh start."""
        raw = await self._redis.hgetall(self.state_key(partner_id))
        s = {text(k): text(v) for k, v in raw.items()}
        same = s.get("head") == head.webhook_id
        return HeadState(
            attempts=int(s.get("attempts", 0)) if same else 0,
            next_at=float(s["next_at"]) if same and "next_at" in s else None,
            failing_since=float(s["failing_since"]) if "failing_since" in s else None,
            delivered=int(s.get("delivered", 0)),
        )

    async def record_failure(
        self, partner_id: str, head: Item, attempts: int, next_at: float, failing_since: float
    ) -> None:
        await self._redis.hset(
            self.state_key(partner_id),
            mapping={
                "head": head.webhook_id,
                "attempts": attempts,
                "next_at": repr(next_at),
                "failing_since": repr(failing_since),
            },
        )

    async def record_failure_streak(self, partner_id: str, failing_since: float) -> None:
        await self._redis.hset(self.state_key(partner_id), "failing_since", repr(failing_since))

    async def reset_failures(self, partner_id: str) -> None:
        """Forget the failure streak and the head's retry wait (a partner was re-enabled)."""
        await self._redis.hdel(self.state_key(partner_id), "failing_since", "next_at")

    async def complete(self, partner_id: str, head: Item, covers: int, *, collapse: bool) -> int:
        """Mark ``head`` delivered with a key set at version ``covers``; returns the number of
        items removed (more than one when collapsed)."""
        removed = await self._complete(
            keys=[self.queue_key(partner_id), self.state_key(partner_id)],
            args=[
                head.member,
                max(covers, head.version) if collapse else head.version,
                "1" if collapse else "0",
            ],
        )
        return int(removed)

    async def drop_head(self, partner_id: str, head: Item) -> None:
        """Remove an exhausted head so newer items can go; its failure streak is kept."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.queue_key(partner_id), head.member)
            pipe.hdel(self.state_key(partner_id), "head", "attempts", "next_at")
            await pipe.execute()

    async def drop_partner(self, partner_id: str) -> None:
        """Forget a deleted partner's queue, state and history."""
        await self._redis.delete(
            self.queue_key(partner_id),
            self.state_key(partner_id),
            self.attempts_key(partner_id),
        )

    async def record_attempt(
        self, partner_id: str, record: Mapping[str, str | int | float]
    ) -> None:
        await self._redis.xadd(
            self.attempts_key(partner_id),
            dict(record),  # type: ignore[arg-type]
            maxlen=constants.attempts_kept,
            approximate=True,
        )

    async def attempts(self, partner_id: str, limit: int = 100) -> list[dict[str, str]]:
        """The latest attempts, newest first."""
        rows = await self._redis.xrevrange(self.attempts_key(partner_id), count=limit) or []
        return [
            {"id": text(rid), **{text(k): text(v) for k, v in (fields or {}).items()}}
            for rid, fields in rows
        ]

    async def dead_letters(self, limit: int = 100) -> list[dict[str, str]]:
        """The latest dead letters, newest first."""
        rows = await self._redis.xrevrange(self.dead_key, count=limit) or []
        return [
            {"id": text(rid), **{text(k): text(v) for k, v in (fields or {}).items()}}
            for rid, fields in rows
        ]

    async def dead_letter(self, record: Mapping[str, str | int | float]) -> None:
        await self._redis.xadd(
            self.dead_key,
            dict(record),  # type: ignore[arg-type]
            maxlen=constants.dead_letters_kept,
            approximate=True,
        )

    async def acquire(self, partner_id: str, owner: str, lease_s: float) -> bool:
        """Take the partner's delivery lease if nobody holds it."""
        return bool(
            await self._redis.set(
                self.lease_key(partner_id), owner, nx=True, px=int(lease_s * 1000)
            )
        )

    async def renew(self, partner_id: str, owner: str, lease_s: float) -> bool:
        """Extend our lease; ``False`` means it expired and another replica may own it."""
        return bool(
            await self._renew(keys=[self.lease_key(partner_id)], args=[owner, int(lease_s * 1000)])
        )

    async def release(self, partner_id: str, owner: str) -> None:
        await self._release(keys=[self.lease_key(partner_id)], args=[owner])
