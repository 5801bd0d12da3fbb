"""The issuer's Redis store: key records, key-set version and epoch, and the event stream.

Every change goes through one Lua script, :data:`COMMIT_SCRIPT`, which atomically

1. checks the epoch and compare-and-sets the ``version`` (no lost or doubled update),
2. checks the scheduler's fencing token when one is given (a deposed leader writes nothing),
3. checks every key's type *before* writing, because Redis does not roll back a script that
   fails half-way: either all of its writes happen or none,
4. writes the records and the meta fields (and forgets records of long-gone keys), and
5. XADDs the pre-signed events (consecutive versions), trimming the stream by age (MINID).

So a state change and its event are both present or both absent. Ages use the Redis server's
``TIME``, the same clock that stamps stream ids.

A change requested under an ``Idempotency-Key`` (:mod:`issuer.idempotency`) carries a
:class:`Receipt`: the script checks the key's record *first* and writes nothing when one is
there, else writes the record with the change. So a change is made once per key however often
it is sent, also when a reply was lost and the very same script is sent again.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import redis.asyncio as aioredis

from subscriber import redis_keys

from .durability import Durability, eval_durably
from .errors import AlreadyRecorded, LeaseLost, StoreError, VersionConflict
from .records import KeyRecord

logger = logging.getLogger(__name__)

#: A raw reply from redis-py: ``bytes`` or ``str`` depending on ``decode_responses``.
RedisReply: TypeAlias = Any

# An idempotency record found under a key is returned as it is, to be authenticated by the
# caller; something that is not a string there is returned as a value that cannot be.
# It is rewritten as found (KEEPTTL), a write: WAIT waits for the writes of its own connection,
# and newer Redis versions move that mark only when the connection writes (older ones on any
# command). So the WAIT after this script (KEYHERALD_MIN_REPLICAS), on whatever connection or
# issuer replica a retry lands, confirms that the replicas hold the change that wrote the record.
_RECORDED_LUA = """
local function recorded(name)
  local kind = redis.call('TYPE', name)['ok']
  if kind == 'none' then return nil end
  if kind ~= 'string' then return 'not a string: ' .. kind end
  local found = redis.call('GET', name)
  redis.call('SET', name, found, 'KEEPTTL')
  return found
end
"""

LOOKUP_SCRIPT = (
    _RECORDED_LUA
    + """
local found = recorded(KEYS[1])
if found then return {'RECORDED', found} end
return {'NONE', ''}
"""
)

COMMIT_SCRIPT = (
    _RECORDED_LUA
    + """
local meta, keys, stream, fence, record = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local expected, expected_epoch, token = ARGV[1], ARGV[2], ARGV[3]
local retention_ms = tonumber(ARGV[4])
local n_meta, n_records, n_events = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n_forget = tonumber(ARGV[8])
local new_version, replace = tonumber(ARGV[9]), ARGV[10]
local record_value, record_ttl_ms, record_replaces = ARGV[11], ARGV[12], ARGV[13]

if record then
  local found = recorded(record)
  if found and (record_replaces == '' or found ~= record_replaces) then
    return {'RECORDED', found}
  end
end
local current = redis.call('HGET', meta, 'version') or '0'
local epoch = redis.call('HGET', meta, 'epoch') or ''
if epoch ~= expected_epoch then return {'EPOCH', current} end
if current ~= expected then return {'VERSION', current} end
if token ~= '' and redis.call('GET', fence) ~= token then
  return {'FENCE', current}
end
local types = {[meta] = 'hash', [keys] = 'hash', [stream] = 'stream'}
for key, wanted in pairs(types) do
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. found)
  end
end

local i = 14
if replace == '1' then redis.call('DEL', keys) end
for _ = 1, n_forget do
  redis.call('HDEL', keys, ARGV[i])
  i = i + 1
end
for _ = 1, n_meta do
  redis.call('HSET', meta, ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_records do
  redis.call('HSET', keys, ARGV[i], ARGV[i + 1])
  i = i + 2
end
local now = redis.call('TIME')
local min_id = math.max(0, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  - retention_ms)
for _ = 1, n_events do
  redis.call('XADD', stream, 'MINID', min_id, '*',
    'type', ARGV[i], 'version', ARGV[i + 1], 'jws', ARGV[i + 2])
  i = i + 3
end
redis.call('HSET', meta, 'version', new_version)
if record then redis.call('SET', record, record_value, 'PX', record_ttl_ms) end
return {'OK', new_version}
"""
)
#: Script replies that report a write the replicas must hold (``KEYHERALD_MIN_REPLICAS``).
WRITTEN: Final = ("OK", "RECORDED")


@dataclass(frozen=True, slots=True)
class Receipt:
    """A record written by a commit with its change, unless ``key`` already holds one (other
    than ``replaces``, an expired record the caller read): then nothing is written.

    :param key: the record's Redis key (on the issuer's hash-tag).
    :param ttl_ms: its expiry.
    """

    key: str
    value: str
    ttl_ms: int
    replaces: str | None = None


def text(value: RedisReply) -> str:
    """A reply as ``str`` whatever the client's ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The key set as read in one transaction.

    ``raw_keys`` are the records exactly as stored (what :mod:`issuer.integrity`
    authenticates); ``keys`` those of them that parse.
    """

    version: int
    epoch: str | None
    keys: Mapping[str, KeyRecord]
    meta: Mapping[str, str] = field(repr=False)
    raw_keys: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def initialised(self) -> bool:
        return self.epoch is not None

    @classmethod
    def from_raw(cls, meta: Mapping[str, str], raw_keys: Mapping[str, str]) -> "Snapshot":
        """Parse what was read; a record that does not parse is left out of ``keys`` (and
        fails authentication)."""
        keys: dict[str, KeyRecord] = {}
        for kid, raw in raw_keys.items():
            try:
                keys[kid] = KeyRecord.from_json(raw)
            except (ValueError, TypeError):
                logger.error("key record %r does not parse", kid[:64])
        try:
            version = int(meta.get("version", 0))
        except ValueError:
            version = -1
        return cls(
            version=version,
            epoch=meta.get("epoch"),
            keys=keys,
            meta=dict(meta),
            raw_keys=dict(raw_keys),
        )


class KeyStore:
    """Reads and atomic writes of one issuer's records; takes a redis client the caller owns."""

    def __init__(self, redis: aioredis.Redis, issuer: str) -> None:
        self.redis = redis
        self.issuer = issuer
        self.meta_key = redis_keys.meta_hash(issuer)
        self.keys_key = redis_keys.keys_hash(issuer)
        self.stream_key = redis_keys.event_stream(issuer)
        self.fence_key = redis_keys.scheduler_fence(issuer)
        self._commit = redis.register_script(COMMIT_SCRIPT)
        self._lookup = redis.register_script(LOOKUP_SCRIPT)
        #: Set from ``KEYHERALD_MIN_REPLICAS``: each commit also waits for replicas.
        self.durability: Durability | None = None

    async def load(self) -> Snapshot:
        """Meta and every record, read atomically (MULTI/EXEC)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.meta_key)
            pipe.hgetall(self.keys_key)
            raw_meta, raw_keys = await pipe.execute()
        meta = {text(k): text(v) for k, v in raw_meta.items()}
        return Snapshot.from_raw(meta, {text(k): text(v) for k, v in raw_keys.items()})

    async def meta(self) -> dict[str, str]:
        """The meta hash alone (one ``HGETALL``)."""
        raw = await self.redis.hgetall(self.meta_key)
        return {text(k): text(v) for k, v in raw.items()}

    async def head(self) -> tuple[str | None, int]:
        """``(epoch, version)`` in one round trip: enough to tell whether a cache is current."""
        epoch, version = await self.redis.hmget(self.meta_key, ["epoch", "version"])
        try:
            number = int(version or 0)
        except ValueError:
            number = -1  # never equal to a version we hold: the caller re-reads and checks
        return (text(epoch) if epoch is not None else None), number

    async def recorded(self, key: str) -> str | None:
        """The idempotency record at ``key`` as stored (not authenticated), or ``None``.

        :raises NotReplicated: one is there but, with ``durability``, too few replicas
            acknowledged holding it.
        """
        status, found = await self._eval(self._lookup, LOOKUP_SCRIPT, [key], [])
        return text(found) if text(status) == "RECORDED" else None

    async def _eval(
        self, script: Any, source: str, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        if self.durability is None:
            return await script(keys=keys, args=args)
        return await eval_durably(self.redis, source, keys, args, self.durability, WRITTEN)

    async def commit(
        self,
        *,
        expected_version: int | str,
        expected_epoch: str | None,
        records: Sequence[KeyRecord],
        events: Sequence[Mapping[str, str]],
        retention_s: float,
        meta: Mapping[str, str] | None = None,
        fence: int | None = None,
        forget: Sequence[str] = (),
        new_version: int | None = None,
        replace: bool = False,
        receipt: Receipt | None = None,
    ) -> int:
        """Write ``records`` (and ``meta``) and append ``events``, or nothing at all.

        :param events: stream fields (``type``, ``version``, ``jws``) with versions
            ``expected_version + 1`` onwards.
        :param fence: the scheduler's fencing token; ``None`` for operator actions.
        :param forget: kids whose records to delete (retired or revoked long ago).
        :param new_version: the version written (default ``expected_version + len(events)``;
            a restore jumps past every version its history may have used).
        :param replace: delete every record first (a restore writes the whole set).
        :param receipt: the idempotency record of the change, written with it.
        :returns: the new version.
        :raises AlreadyRecorded: ``receipt``'s key holds a record: nothing was written.
        :raises VersionConflict: the version or epoch changed since it was read.
        :raises LeaseLost: ``fence`` is no longer the current token.
        """
        if new_version is None:
            assert isinstance(expected_version, int)
            new_version = expected_version + len(events)
        first = new_version - len(events)
        for offset, event in enumerate(events, start=1):
            if int(event["version"]) != first + offset:
                raise ValueError("events must carry consecutive versions up to the new one")
        meta_items = list((meta or {}).items())
        args: list[str | int] = [
            str(expected_version),
            expected_epoch or "",
            "" if fence is None else str(fence),
            int(retention_s * 1000),
            len(meta_items),
            len(records),
            len(events),
            len(forget),
            new_version,
            "1" if replace else "0",
            receipt.value if receipt else "",
            receipt.ttl_ms if receipt else 0,
            (receipt.replaces or "") if receipt else "",
            *forget,
        ]
        for name, value in meta_items:
            args += [name, value]
        for record in records:
            args += [record.kid, record.to_json()]
        for event in events:
            args += [event["type"], event["version"], event["jws"]]
        keys = [self.meta_key, self.keys_key, self.stream_key, self.fence_key]
        if receipt is not None:
            keys.append(receipt.key)
        try:
            status, version = await self._eval(self._commit, COMMIT_SCRIPT, keys, args)
        except aioredis.ResponseError as e:
            raise StoreError(f"the store refused the change: {e}") from e
        status = text(status)
        if status == "OK":
            return int(text(version))
        if status == "RECORDED":
            raise AlreadyRecorded(text(version))
        if status == "FENCE":
            raise LeaseLost(f"fencing token {fence} is stale; another scheduler took the lease")
        raise VersionConflict(
            f"expected version {expected_version}, the store is at {text(version)} ({status})"
        )


async def publish_freshness(
    redis: aioredis.Redis, stream: str, fields: Mapping[str, str], keep: int = 8
) -> None:
    """Append one signed freshness record, keeping only the newest ``keep``."""
    entry: dict[Any, Any] = dict(fields)
    await redis.xadd(stream, entry, maxlen=keep, approximate=False)


async def check_persistence(redis: aioredis.Redis) -> bool | None:
    """Whether Redis would keep the key store across a restart (AOF or RDB snapshots).

    Logs a loud warning when it would not; returns ``None`` when the server forbids ``CONFIG``
    (managed Redis often does), since then we cannot tell.
    """
    try:
        reply = await redis.config_get("appendonly")
        reply.update(await redis.config_get("save"))
    except aioredis.ResponseError as e:
        logger.info("cannot check Redis persistence (CONFIG refused: %s)", e)
        return None
    config = {text(k): text(v) for k, v in reply.items()}
    aof = config.get("appendonly", "no") == "yes"
    rdb = bool(config.get("save", "").strip())
    if not (aof or rdb):
        logger.warning(
            "REDIS DOES NOT PERSIST DATA (appendonly=no, save=''): every signing key and the "
            "key-set epoch will be LOST on a Redis restart, and all verifiers will have to "
            "resync. Enable AOF (appendonly yes) or RDB snapshots for production."
        )
    return aof or rdb
