"""The relay's reader of the issuer's event stream: a Redis consumer group, at-least-once.

Each replica is one consumer of the group. An entry is acknowledged only in the same Redis
step that queues it for the partners (see :meth:`relay.queue.DeliveryStore.fan_out`), so a
replica that dies between reading and queueing leaves it pending, and then:

* on start, a replica first re-reads its *own* pending entries (same consumer name);
* peers ``XAUTOCLAIM`` entries idle longer than ``idle_before_claim_s`` (which exceeds the
  delivery timeout, so a live replica's work is never taken from it);
* an entry that was handed out more than ``max_attempts`` times, or whose signature does not
  verify, goes to the dead-letter stream and is acknowledged instead of blocking the group;
* consumers with nothing pending that stayed idle past the same threshold (a replica that
  restarted under a new name, the default ``<host>-<pid>``, or went away) are deleted.

Until reclaimed entries are queued, deliveries of newer events wait for them (see
:mod:`relay.delivery`), so an entry reclaimed late is still delivered, in order.

After a Redis restart without persistence the group is gone and reads fail with ``NOGROUP``
(after a FLUSHALL, a blocked read fails with ``UNBLOCKED``); the group is recreated from the
start of the stream (the partners' delivered marks keep that from sending anything twice).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from redis.exceptions import ResponseError

from subscriber.errors import EventError, KeyheraldError
from subscriber.events import Event, parse_event
from subscriber.redis_keys import event_stream

from . import constants
from .items import Recorded
from .metrics import RelayMetrics
from .queue import DeliveryStore, text

logger = logging.getLogger(__name__)

#: (event, signed JWS, group, entry id) -> queue it and XACK the entry.
Handler = Callable[[Event, str, str, str], Awaitable[object]]
#: One stream entry as redis-py returns it.
Entry = tuple[bytes, Mapping[bytes, bytes]]
#: Fetches the announcement keys the issuer publishes now (kid -> key); raises a
#: :class:`~subscriber.errors.KeyheraldError` (``FetchError``, ``InvalidKey``) when it cannot.
KeyRefresher = Callable[[], Awaitable[Mapping[str, Ed25519PublicKey]]]


# Consumers with nothing pending, idle past the claim threshold, other than ourselves. Checked
# and deleted in one script: XGROUP DELCONSUMER drops a consumer's pending entries, so one that
# read something between a check and a delete must never be deleted.
_PRUNE = """
local removed = {}
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #row, 2 do f[row[i]] = row[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
return removed
"""


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class StreamConsumer:
    """Reads one issuer's stream as one consumer of a group and hands verified events on.

    :param announce_keys: kid -> Ed25519 key; events signed otherwise are refused.
    :param handler: called with each verified event; must acknowledge the entry.
    :param consumer: this replica's consumer name; keep it across restarts so pending
        entries are found again.
    :param refresh_keys: refetches the issuer's announcement keys when an entry is signed by
        an unknown one (at most once per ``refresh_cooldown_s``); ``None`` with pinned keys.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        issuer: str,
        announce_keys: Mapping[str, Ed25519PublicKey],
        handler: Handler,
        *,
        group: str,
        consumer: str,
        block_ms: int = constants.block_ms,
        idle_before_claim_s: float = constants.idle_before_claim_s,
        max_attempts: int = constants.max_entry_attempts,
        retry_interval_s: float = constants.poll_interval_s,
        metrics: RelayMetrics | None = None,
        refresh_keys: KeyRefresher | None = None,
        refresh_cooldown_s: float = constants.announce_refresh_cooldown_s,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f'max_attempts must be >= 1, the input is "{max_attempts}"')
        if idle_before_claim_s <= 0:
            raise ValueError(
                f'idle_before_claim_s must be > 0, the input is "{idle_before_claim_s}"'
            )
        self._redis = redis
        self.issuer = issuer
        self.stream = event_stream(issuer)
        self._keys = announce_keys
        self._handler = handler
        self.group = group
        self.consumer = consumer
        self._block_ms = block_ms
        self._idle_ms = int(idle_before_claim_s * 1000)
        self._max_attempts = max_attempts
        self._retry_interval_s = retry_interval_s
        self._dead = DeliveryStore(redis, issuer)
        self.metrics = metrics or RelayMetrics()
        self._retry_own = True
        self._refresh_keys = refresh_keys
        self._refresh_cooldown_s = refresh_cooldown_s
        self._refreshed_at: float | None = None
        self._prune = redis.register_script(_PRUNE)
        self._pruned_at: float | None = None

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; an existing group is kept."""
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            logger.info("consumer group created group=%s", self.group)
        except ResponseError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise

    async def run(self) -> None:
        """Consume until cancelled."""
        await self.ensure_group()
        while True:
            # A cancellation can be lost inside the Redis client (it reconnects and retries a
            # read it was told to abandon); the task still reports it, so honour it here.
            if _cancelling():
                raise asyncio.CancelledError
            try:
                await self.poll()
            except ResponseError as e:
                # NOGROUP: the group is gone (a Redis restart without persistence). UNBLOCKED:
                # the stream was deleted (FLUSHALL) under our blocked XREADGROUP. Either way the
                # group must be created again; any other reply error is a bug and is raised.
                if not str(e).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                logger.warning("consumer group or stream gone (%s), recreating", str(e)[:9])
                await self.ensure_group()
                self._retry_own = True
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as e:
                # redis-py can turn a cancellation that lands mid-read into a ConnectionError;
                # swallowing that would make the task impossible to stop.
                if _cancelling():
                    raise asyncio.CancelledError from e
                logger.warning("stream read failed, retrying: %s", type(e).__name__)
                # Entries read before the failure may not have been queued: look again.
                self._retry_own = True
                await asyncio.sleep(self._retry_interval_s)

    async def poll(self) -> int:
        """One round: own pending entries (when due), dead peers' entries, then new ones.

        :returns: how many entries were handled.
        """
        handled = 0
        if self._retry_own:
            self._retry_own = False
            handled += await self.drain_own_pending()
        handled += await self.claim_idle()
        now = time.monotonic()
        if self._pruned_at is None or now - self._pruned_at >= self._idle_ms / 1000:
            self._pruned_at = now
            await self.prune_consumers()
        reply = await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=constants.batch_size,
            block=self._block_ms,
        )
        # RESP2 answers [[stream, entries]], RESP3 {stream: entries}.
        streams = reply.items() if isinstance(reply, dict) else (reply or [])
        for _, entries in cast(list[tuple[bytes, list[Entry]]], streams):
            for entry_id, fields in entries:
                await self._handle(text(entry_id), fields, delivered=1)
                handled += 1
        return handled

    async def drain_own_pending(self) -> int:
        """Handle the entries this consumer read but never acknowledged (a crash, a failure)."""
        rows = await self._redis.xpending_range(
            self.stream, self.group, "-", "+", constants.batch_size, consumername=self.consumer
        )
        if not rows:
            return 0
        ids: list[int | bytes | str | memoryview[int]] = [row["message_id"] for row in rows]
        # XCLAIM to ourselves with no idle minimum: it returns the fields, counts the hand-out
        # (which is what bounds a poison entry) and resets the idle time peers look at.
        claimed = await self._redis.xclaim(self.stream, self.group, self.consumer, 0, ids)
        counts = {text(row["message_id"]): int(row["times_delivered"]) + 1 for row in rows}
        present = await self._handle_all(cast(list[Entry], claimed), counts)
        await self._ack_trimmed([text(i) for i in ids], present)
        return len(ids)

    async def claim_idle(self) -> int:
        """``XAUTOCLAIM`` entries other consumers left idle past the claim threshold."""
        reply = await self._redis.xautoclaim(
            self.stream, self.group, self.consumer, self._idle_ms, "0-0", count=constants.batch_size
        )
        entries = cast(list[Entry], reply[1])
        deleted = [text(i) for i in (reply[2] if len(reply) > 2 else [])]
        if deleted:
            # Trimmed from the stream while pending: nothing left to deliver.
            await self._redis.xack(self.stream, self.group, *deleted)
        if not entries:
            return 0
        logger.info("claimed idle entries count=%s", len(entries))
        ids = [text(entry_id) for entry_id, _ in entries]
        rows = await self._redis.xpending_range(
            self.stream, self.group, ids[0], ids[-1], constants.batch_size
        )
        counts = {text(row["message_id"]): int(row["times_delivered"]) for row in rows}
        await self._handle_all(entries, counts)
        return len(entries)

    async def prune_consumers(self) -> list[str]:
        """Delete the group's consumers that have nothing pending and were idle longer than
        the claim threshold (never this one); returns their names."""
        removed = await self._prune(
            keys=[self.stream], args=[self.group, self.consumer, self._idle_ms]
        )
        names = [text(n) for n in removed or []]
        if names:
            logger.info("removed idle consumers with nothing pending: %s", ", ".join(names))
        return names

    async def _handle_all(self, entries: list[Entry], counts: Mapping[str, int]) -> set[str]:
        present = set()
        for entry_id, fields in entries:
            eid = text(entry_id)
            present.add(eid)
            await self._handle(eid, fields, delivered=counts.get(eid, 1))
        return present

    async def _ack_trimmed(self, ids: list[str], present: set[str]) -> None:
        gone = [i for i in ids if i not in present]
        if gone:
            await self._redis.xack(self.stream, self.group, *gone)

    async def _handle(self, entry_id: str, fields: Any, *, delivered: int) -> None:
        if not fields:
            await self._redis.xack(self.stream, self.group, entry_id)
            return
        if delivered > self._max_attempts:
            await self._dead_letter(entry_id, fields, "too_many_attempts")
            return
        try:
            try:
                event = parse_event(fields, self._keys, issuer=self.issuer)
            except EventError as e:
                if e.reason != "forged_event" or not await self._new_announcement_keys():
                    raise
                event = parse_event(fields, self._keys, issuer=self.issuer)
        except EventError as e:
            # Deterministic: it would fail the same way on every retry.
            await self._dead_letter(entry_id, fields, e.reason)
            return
        jws = text(fields.get(b"jws", fields.get("jws")))
        try:
            await self._handler(event, jws, self.group, entry_id)
        except (aioredis.ConnectionError, aioredis.TimeoutError):
            raise
        except Exception:
            # Left pending on purpose: retried from our own pending list, and dead-lettered
            # once handed out max_attempts times, so one bad entry cannot stall the group.
            logger.exception("event handling failed entry=%s version=%s", entry_id, event.version)
            self.metrics.events.labels("failed").inc()
            self._retry_own = True
            await asyncio.sleep(self._retry_interval_s)
            return
        self.metrics.events.labels("fanned_out").inc()

    async def _new_announcement_keys(self) -> bool:
        """Refetch the issuer's announcement keys; ``True`` if one we did not trust appeared.

        New keys are added to the trusted mapping in place (the admin API's replay reads the
        same mapping); keys already trusted stay, so older entries still verify.
        """
        now = time.monotonic()
        if self._refresh_keys is None or (
            self._refreshed_at is not None and now - self._refreshed_at < self._refresh_cooldown_s
        ):
            return False
        self._refreshed_at = now
        try:
            fetched = await self._refresh_keys()
        except KeyheraldError as e:  # metadata unreachable or unusable: keep the keys we have
            logger.warning("could not refetch the announcement keys: %s", e)
            return False
        new = {kid: key for kid, key in fetched.items() if kid not in self._keys}
        if not new:
            return False
        logger.warning("trusting new announcement key(s) %s", ", ".join(sorted(new)))
        if isinstance(self._keys, dict):
            self._keys.update(new)
        else:
            self._keys = {**self._keys, **new}
        return True

    async def _dead_letter(self, entry_id: str, fields: Any, reason: str) -> None:
        logger.warning("stream entry dead-lettered entry=%s reason=%s", entry_id, reason)
        record = {text(k): text(v) for k, v in fields.items()}
        await self._dead.dead_letter(
            {"kind": "stream", "reason": reason, "entry_id": entry_id, **record}
        )
        await self._redis.xack(self.stream, self.group, entry_id)
        self.metrics.dead_letters.labels("stream", reason).inc()
        self.metrics.events.labels("refused").inc()


async def read_history(
    redis: aioredis.Redis,
    issuer: str,
    announce_keys: Mapping[str, Ed25519PublicKey],
    from_version: int,
) -> list[Recorded]:
    """Verified events still in the stream with ``version >= from_version`` (for replays),
    of the newest epoch present, in version order. Entries that do not verify are skipped."""
    stream = event_stream(issuer)
    found: dict[int, Recorded] = {}
    epoch = None
    start = "-"
    while True:
        rows = await redis.xrange(stream, min=start, count=1000)
        if not rows:
            break
        for entry_id, fields in rows:
            if not fields:
                continue
            try:
                event = parse_event(fields, announce_keys, issuer=issuer)  # type: ignore[arg-type]
            except EventError:
                continue
            if event.epoch != epoch:
                found, epoch = {}, event.epoch
            if event.version >= from_version:
                jws = text(fields.get(b"jws", fields.get("jws")))
                found[event.version] = Recorded(event, jws, text(entry_id))
        start = "(" + text(rows[-1][0])
    return [found[v] for v in sorted(found)]
