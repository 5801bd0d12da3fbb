"""Per-partner delivery state in Redis: ordered queues, head retry state, leases, history.

Keys (all under the issuer's hash-tag, see ``relay_key``)::

    queue:<partner>     ZSET  score = key-set version, member = JSON item (event + webhook id)
    state:<partner>     HASH  delivered (every version up to it is delivered or
                              dead-lettered), epoch (+ epoch_entry, the entry that set it),
                              head / attempts / next_at / span (retry state of the queue
                              head; span: the last version its delivery stands for),
                              failing_since
    lease:<partner>     STRING replica id, PX; the one replica delivering to this partner
    attempts:<partner>  STREAM one entry per attempt (capped)
    dead                STREAM exhausted deliveries and poison stream entries (capped)

A queue is consumed strictly from its lowest version: a head that keeps failing blocks every
newer item for that partner, which is what keeps delivery in version order across replicas.
A head is also held while an older stream entry is still pending in the consumer group (see
:meth:`DeliveryStore.oldest_pending`): a replica that died holding entries 1-12 must not let a
peer deliver 13 first, or the ``delivered`` mark would pass versions nobody has queued yet.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from subscriber.redis_keys import event_stream, relay_key

from . import constants
from .items import Item

logger = logging.getLogger(__name__)


def text(value: object) -> str:
    """A Redis reply value as text (replies are bytes unless ``decode_responses=True``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


# Fan-out of one verified stream entry, and its XACK, in one step: either every partner queue
# has the event or the entry stays pending and is retried. An item at or below a partner's
# ``delivered`` mark is skipped so that a re-processed entry is not delivered twice (the mark
# only ever covers versions that were all queued: see the hold in relay.delivery). An event of
# another epoch (the key store was rebuilt) drops that partner's old-epoch queue first, unless
# it is older in the stream than the entry that set the current epoch: a straggler of the old
# epoch reclaimed late must not wipe the new epoch's queue.
_FAN_OUT = """
local function before(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  if tonumber(am) ~= tonumber(bm) then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end
local version = tonumber(ARGV[3])
for i = 2, #KEYS, 2 do
  local state = KEYS[i + 1]
  local epoch = redis.call('HGET', state, 'epoch')
  local stale = false
  if epoch and epoch ~= ARGV[5] then
    local since = redis.call('HGET', state, 'epoch_entry')
    if since and ARGV[2] ~= '' and before(ARGV[2], since) then
      stale = true
    else
      redis.call('DEL', KEYS[i])
      redis.call('HSET', state, 'delivered', 0)
      redis.call('HDEL', state, 'head', 'attempts', 'next_at', 'span')
    end
  end
  if not stale then
    if epoch ~= ARGV[5] then
      redis.call('HSET', state, 'epoch', ARGV[5], 'epoch_entry', ARGV[2])
    end
    local delivered = tonumber(redis.call('HGET', state, 'delivered') or '0')
    if version > delivered then
      redis.call('ZADD', KEYS[i], 'NX', version, ARGV[4])
    end
  end
end
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""

# Success of a delivery: drop the items it stood for (ARGV[2..]), raise the delivered mark to
# the last version it stood for (ARGV[1]), clear the head's retry state. Returns how many
# items were removed.
_COMPLETE = """
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
end
local delivered = tonumber(redis.call('HGET', KEYS[2], 'delivered') or '0')
if tonumber(ARGV[1]) > delivered then
  redis.call('HSET', KEYS[2], 'delivered', ARGV[1])
end
redis.call('HDEL', KEYS[2], 'head', 'attempts', 'next_at', 'span', 'failing_since')
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
class HeadState:
    """Retry state of a queue's head item; ``span`` is the last version its delivery stands
    for once a collapsed delivery was first attempted (``None`` before)."""

    attempts: int
    next_at: float | None
    failing_since: float | None
    delivered: int
    span: int | None = None


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

    async def items(self, partner_id: str, low: int, high: int) -> list[Item]:
        """Queued items with versions in ``[low, high]``, in queue order."""
        # Without WITHSCORES the reply is a plain list of members.
        key = self.queue_key(partner_id)
        raw = cast("list[bytes]", await self._redis.zrangebyscore(key, low, high))
        return [Item.from_member(r) for r in raw]

    async def oldest_pending(self, group: str) -> str | None:
        """The oldest stream entry read by some consumer of ``group`` and not yet queued (or
        dead-lettered), or ``None``. Entries never read are all newer than any queued one."""
        try:
            summary = await self._redis.xpending(self._stream, group)
        except ResponseError as e:
            if str(e).startswith("NOGROUP"):  # the consumer recreates it; nothing is pending
                return None
            raise
        if not summary or not summary.get("pending"):
            return None
        return text(summary["min"])

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
            span=int(s["span"]) if same and "span" in s else None,
        )

    async def fix_span(self, partner_id: str, head: Item, span: int) -> None:
        """Record, before its first attempt, the last version a delivery stands for, so every
        retry (from any replica) sends the same set under the same ``webhook-id``."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.state_key(partner_id), "attempts", "next_at")
            pipe.hset(self.state_key(partner_id), mapping={"head": head.webhook_id, "span": span})
            await pipe.execute()

    async def record_failure(
        self,
        partner_id: str,
        head: Item,
        attempts: int,
        next_at: float,
        failing_since: float,
        span: int | None = None,
    ) -> None:
        key = self.state_key(partner_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "head": head.webhook_id,
                    "attempts": attempts,
                    "next_at": repr(next_at),
                    "failing_since": repr(failing_since),
                },
            )
            # A span belongs to its head: never leave one behind for another.
            if span is None:
                pipe.hdel(key, "span")
            else:
                pipe.hset(key, "span", span)
            await pipe.execute()

    async def record_failure_streak(self, partner_id: str, failing_since: float) -> None:
        await self._redis.hset(self.state_key(partner_id), "failing_since", repr(failing_since))

    async def reset_failures(self, partner_id: str) -> None:
        """Forget the failure streak and the head's retry wait (a partner was re-enabled)."""
        await self._redis.hdel(self.state_key(partner_id), "failing_since", "next_at")

    async def complete(self, partner_id: str, items: Sequence[Item]) -> int:
        """Mark a delivery of ``items`` (the head first) done; returns how many were removed.

        The delivered mark rises to the last version delivered: the caller only sends a head
        once every older stream entry is queued, so every version up to it has been handled.
        """
        removed = await self._complete(
            keys=[self.queue_key(partner_id), self.state_key(partner_id)],
            args=[max(i.version for i in items), *(i.member for i in items)],
        )
        return int(removed)

    async def drop_head(self, partner_id: str, items: Sequence[Item]) -> None:
        """Remove an exhausted delivery so newer items can go; its failure streak is kept."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.queue_key(partner_id), *(i.member for i in items))
            pipe.hdel(self.state_key(partner_id), "head", "attempts", "next_at", "span")
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
