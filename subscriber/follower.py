"""The stream follower: one background task per verifier, blocking ``XREAD`` on the event stream.

Plain ``XREAD``, not a consumer group: every verifier must see every event. One call reads
two streams of the issuer: the events and the signed freshness records. Each session starts
with a race-free resync (read the streams' last ids, *then* fetch the signed snapshot, then
follow from those ids, so an event committed in between is read from the stream and one
committed before is in the snapshot). Events are verified against the announcement keys and
applied only if they continue the history the verifier holds (``prev``/``digest``); a version
gap, a fork, a new epoch or a stream that lost its entries sends the verifier back to the
snapshot, at once the first time and then at most once per ``resync_cooldown_s`` (so replayed
entries cost one fetch, not one each); a forged entry only asks for a rate-limited refresh.

Redis errors end the session: the follower reports itself disconnected and reconnects with
exponential backoff and full jitter (tenacity), resyncing each time; after a failure of the
shared stream watch, once the watch reads again.
"""

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from .cancellation import raise_if_cancelled
from .clock import Clock
from .constants import block_ms, reconnect_max_s, reconnect_min_s, resync_cooldown_s, xread_count
from .errors import EventError, FetchError
from .events import Event, StreamFields, parse_event
from .history import Freshness, parse_freshness
from .keyset import KeySet, Outcome
from .metrics import Metrics
from .redis_conn import socket_timeout
from .stream_watch import acquire_watch, release_watch

logger = logging.getLogger(__name__)

#: One stream entry as redis-py returns it: (id, fields).
StreamEntry: TypeAlias = tuple[bytes | str, StreamFields]
#: XREAD's reply: RESP2 ``[[stream, [entry, ...]]]`` or RESP3 ``{stream: [entry, ...]}``.
XReadReply: TypeAlias = list[Any] | dict[Any, Any] | None

#: The first id of any stream: reading after it reads everything.
START_ID = "0-0"
#: An idle follower wakes this often, with no command, to report the stream reachable.
idle_wake_s = 10.0

# Events already verified in this process, keyed by (issuer + announcement keys, JWS): when
# many verifiers of one issuer share a process, each announcement's signature is checked once.
# A hit needs the same JWS under the very same trusted keys, so the answer cannot differ.
# Cleared when full rather than LRU: lock-free, and a flood only costs re-verification.
_VERIFIED_MAX = 256
_verified: dict[tuple[bytes, str], Event] = {}


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``"1700000000000-3"`` -> ``(1700000000000, 3)``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _by_stream(reply: XReadReply) -> dict[str, list[StreamEntry]]:
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else reply
    return {_text(stream): list(entries) for stream, entries in pairs}


#: Events that send the follower back to the snapshot.
_RESYNC_OUTCOMES = (Outcome.GAP, Outcome.NEW_EPOCH, Outcome.FORK)


def effective_block_ms(client: aioredis.Redis, wanted_ms: int = block_ms) -> int:
    """``BLOCK`` kept below the client's socket timeout, or redis-py raises TimeoutError
    on a healthy but quiet stream."""
    timeout_s = socket_timeout(client)
    if timeout_s is None:
        return wanted_ms
    return max(1, min(wanted_ms, int(timeout_s * 1000 / 2)))


class StreamFollower:
    """Follows one issuer's event stream into a :class:`KeySet`.

    :param refresh_jwks: fetches the JWKS and replaces the key set from it (raises
        :class:`FetchError`); the follower calls it to resync.
    :param request_refresh: asks for a rate-limited JWKS refresh without waiting (used on a
        forged event, which anyone able to write to Redis could repeat at will).
    :param on_connected: told ``True`` once a session is synced and following, ``False`` when
        it ends; and called on every ``XREAD`` reply, as proof the stream is reachable.
    :param on_applied: told each event applied, and the time it was applied.
    :param fresh_stream: the issuer's freshness stream (``None``: not followed).
    :param on_fresh: told each signed freshness record that matches the key set held.
    :param on_error: told each Redis error that ended or prevented a session.
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        stream: str,
        keyset: KeySet,
        issuer: str,
        announcement_keys: Mapping[str, Ed25519PublicKey],
        refresh_jwks: Callable[[], Awaitable[object]],
        request_refresh: Callable[[str], None],
        on_connected: Callable[[bool], None],
        on_applied: Callable[[Event, float], None],
        clock: Clock,
        metrics: Metrics,
        block_ms: int = block_ms,
        reconnect_max_s: float = reconnect_max_s,
        fresh_stream: str | None = None,
        on_fresh: Callable[[Freshness], None] = lambda _: None,
        resync_cooldown_s: float = resync_cooldown_s,
        on_error: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.keyset = keyset
        self.issuer = issuer
        self.announcement_keys = announcement_keys  # also sets the trust fingerprint
        self._refresh_jwks = refresh_jwks
        self._request_refresh = request_refresh
        self._on_connected = on_connected
        self._on_applied = on_applied
        self._on_error = on_error
        self._clock = clock
        self._metrics = metrics
        self.block_ms = effective_block_ms(redis, block_ms)
        self._reconnect_max_s = reconnect_max_s
        #: Id of the last entry read (or the stream head read at resync).
        self.last_id = START_ID
        self.fresh_stream = fresh_stream
        self.fresh_last_id = START_ID
        self._on_fresh = on_fresh
        self._resync_cooldown_s = resync_cooldown_s
        self._last_resync_at = -math.inf

    @property
    def announcement_keys(self) -> Mapping[str, Ed25519PublicKey]:
        """The Ed25519 keys whose signature makes an event trusted."""
        return self._announcement_keys

    @announcement_keys.setter
    def announcement_keys(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._announcement_keys = keys
        raw = sorted(
            kid.encode() + b"=" + key.public_bytes(Encoding.Raw, PublicFormat.Raw)
            for kid, key in keys.items()
        )
        self._trust = b"\n".join([self.issuer.encode(), *raw])

    def _parse(self, fields: StreamFields) -> Event:
        raw = fields.get(b"jws") if b"jws" in fields else fields.get("jws")  # type: ignore[call-overload]
        if isinstance(raw, bytes):
            raw = raw.decode("ascii", "replace")  # a non-ASCII JWS is refused by parse_event
        if not isinstance(raw, str):
            return parse_event(fields, self._announcement_keys, issuer=self.issuer)
        cache_key = (self._trust, raw)
        event = _verified.get(cache_key)
        if event is None:
            event = parse_event(fields, self._announcement_keys, issuer=self.issuer)
            if len(_verified) >= _VERIFIED_MAX:
                _verified.clear()
            _verified[cache_key] = event
        return event

    async def run(self, *, synced: bool = False) -> None:
        """Follow until cancelled.

        :param synced: the caller has just resynced (bootstrap); start following at once.
        """
        self._synced = synced
        streams = (self.stream,) if self.fresh_stream is None else (self.stream, self.fresh_stream)
        self._watch = acquire_watch(self.redis, streams, self.block_ms)
        try:
            await self._run_sessions()
        finally:
            await release_watch(self._watch)

    async def _run_sessions(self) -> None:
        while True:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type((RedisError, FetchError, OSError)),
                # Full jitter; this signature is the same from tenacity 8.2 on, which
                # wait_exponential_jitter's is not (its ``multiplier`` came in 9.x).
                wait=wait_random_exponential(multiplier=reconnect_min_s, max=self._reconnect_max_s),
                before_sleep=self._before_sleep,
                reraise=True,
            )
            # A session that was live and then lost Redis returns normally, so the backoff
            # starts from its minimum again; only failing to (re)connect backs off further.
            await retrying(self._session)

    def _before_sleep(self, state: Any) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None:
            self._on_error(error)
        self._on_connected(False)
        logger.warning(
            "stream %s unreachable (%s), retry %d in %.2fs",
            self.stream,
            type(error).__name__,
            state.attempt_number,
            state.next_action.sleep if state.next_action else 0.0,  # same from tenacity 8.2
        )

    async def _session(self) -> None:
        if not self._synced:
            # After the watch failed: resync once it reads again (see stream_watch.py).
            await self._watch.recovered(self._reconnect_max_s)
            await self.resync("connect")
        self._synced = False  # any later session follows a disconnection: resync first
        self._on_connected(True)
        try:
            await self._follow()
        except (RedisError, OSError) as e:
            self._on_error(e)
            self._on_connected(False)
            logger.warning("stream %s connection lost: %s", self.stream, type(e).__name__)

    async def head_id(self) -> str:
        """Id of the stream's newest entry, or ``0-0`` for an empty or missing stream."""
        newest = await self.redis.xrevrange(self.stream, count=1)
        entry_id = newest[0][0] if newest else None
        return START_ID if entry_id is None else _text(entry_id)

    async def resync(self, cause: str) -> None:
        """Read the streams' heads, then adopt the signed snapshot, then follow from the
        heads: no event can fall between the two. The newest freshness record is read too."""
        head = await self.head_id()
        fresh: list[Any] = []
        if self.fresh_stream is not None:
            fresh = list(await self.redis.xrevrange(self.fresh_stream, count=1) or [])
        await self._refresh_jwks()
        self._advance(head)
        for entry_id, fields in fresh:
            self.fresh_last_id = _text(entry_id)
            self._handle_fresh(fields, after_resync=True)
        self._metrics.child(self._metrics.resyncs, cause).inc()
        logger.info(
            "resynced from the signed snapshot (%s)",
            cause,
            extra={"version": self.keyset.version, "stream_id": head},
        )

    async def _resync_limited(self, cause: str) -> bool:
        """Resync now unless one ran within the cooldown; then only ask for a background
        refresh. Returns whether it resynced."""
        now = self._clock()
        if now - self._last_resync_at >= self._resync_cooldown_s:
            self._last_resync_at = now
            await self.resync(cause)
            return True
        self._request_refresh(cause)
        return False

    def _advance(self, entry_id: str) -> None:
        if stream_id_key(entry_id) > stream_id_key(self.last_id):
            self.last_id = entry_id

    async def _follow(self) -> None:
        # The process's StreamWatch blocks for every follower (subscriber/stream_watch.py);
        # this one takes the watch's batch when it stands where the batch starts, and reads
        # for itself otherwise. The generation is noted before reading, so nothing written
        # meanwhile is missed.
        watch = self._watch
        lost = watch.lost
        # Once per session, after the first empty read: the watch may have started after the
        # stream lost entries (it then knows no better position than ours).
        checked = False
        while True:
            generation, batch = watch.generation, watch.batch
            ids = {self.stream: self.last_id}
            if self.fresh_stream is not None:
                ids[self.fresh_stream] = self.fresh_last_id
            if batch is not None and ids == batch[0]:
                by_stream: dict[str, list[StreamEntry]] = batch[1]
            elif ids == watch.position:
                by_stream = {}  # where the watch stands: nothing newer is known
            else:
                reply: XReadReply = await self.redis.xread(
                    ids,  # type: ignore[arg-type]
                    count=xread_count,
                )
                raise_if_cancelled()
                by_stream = _by_stream(reply)
            self._on_connected(True)
            events = by_stream.get(self.stream, [])
            for entry_id, fields in events:
                await self._handle(_text(entry_id), fields)
            fresh = by_stream.get(self.fresh_stream or "", [])
            for entry_id, fields in fresh:
                self.fresh_last_id = _text(entry_id)
                if not self._handle_fresh(fields):
                    await self._resync_limited("freshness")
            if events or fresh:
                continue
            if watch.lost != lost or not checked:
                lost, checked = watch.lost, True
                await self._check_stream_intact()
                continue
            while watch.generation == generation:
                await watch.wait(generation, timeout_s=idle_wake_s)
                raise_if_cancelled()
                if watch.alive():
                    self._on_connected(True)  # the watch's reads answer: Redis is reachable

    async def _check_stream_intact(self) -> None:
        # A flushed or restarted-empty Redis leaves a blocked XREAD waiting forever on a key
        # that no longer exists; the newest id going backwards is how we notice.
        if self.last_id == START_ID:
            return
        head = await self.head_id()
        if stream_id_key(head) < stream_id_key(self.last_id):
            logger.warning(
                "stream %s lost entries (head %s < last read %s)", self.stream, head, self.last_id
            )
            self.last_id = START_ID
            await self.resync("stream_lost")

    def _handle_fresh(self, fields: StreamFields, *, after_resync: bool = False) -> bool:
        """Check one freshness record; ``False`` when it says we are behind or forked."""
        try:
            record = parse_freshness(fields, self._announcement_keys, issuer=self.issuer)
        except EventError as e:
            self._metrics.child(self._metrics.events_rejected, e.reason).inc()
            logger.warning("freshness record refused: %s (%s)", e, e.reason)
            return True
        view = self.keyset.view
        if (record.epoch, record.version, record.digest) == (view.epoch, view.version, view.digest):
            self._on_fresh(record)
            return True
        if record.epoch in self.keyset.old_epochs or (
            record.epoch == view.epoch and record.version < view.version
        ):
            return True  # older than what we hold: says nothing about now
        if not after_resync:
            logger.info(
                "freshness record at %s v%d: our key set (%s v%d) is not current",
                record.epoch,
                record.version,
                view.epoch,
                view.version,
            )
        return after_resync

    async def _handle(self, entry_id: str, fields: StreamFields) -> None:
        self._advance(entry_id)
        try:
            event = self._parse(fields)
        except EventError as e:
            self._metrics.child(self._metrics.events_rejected, e.reason).inc()
            logger.warning(
                "stream entry %s refused: %s (%s)",
                entry_id,
                e,
                e.reason,
                extra={"stream_id": entry_id, "reason": e.reason},
            )
            self._request_refresh("rejected_event")
            return
        outcome = self.keyset.apply_event(event, self._clock())
        if outcome in _RESYNC_OUTCOMES:
            logger.info(
                "event %s v%d: %s, resyncing",
                event.type,
                event.version,
                outcome.value,
                extra={"kid": event.kid, "event": event.type, "version": event.version},
            )
            if await self._resync_limited(outcome.value):
                outcome = self.keyset.apply_event(event, self._clock())
                if outcome is Outcome.NEW_EPOCH:
                    # The signed snapshot is of another epoch: this one is over (a replay of
                    # entries from a lost store), and its entries are dropped from now on.
                    self.keyset.old_epochs.add(event.epoch)
                    outcome = Outcome.OLD_EPOCH
                elif outcome in _RESYNC_OUTCOMES:
                    logger.warning(
                        "snapshot behind the stream after resync (%s)",
                        outcome.value,
                        extra={"kid": event.kid, "event": event.type, "version": event.version},
                    )
        self._record(event, outcome)

    def _record(self, event: Event, outcome: Outcome) -> None:
        extra = {"kid": event.kid, "event": event.type, "version": event.version}
        if outcome is Outcome.APPLIED:
            self._metrics.child(self._metrics.events_applied, event.type).inc()
            self._on_applied(event, self._clock())
            logger.info("applied %s v%d", event.type, event.version, extra=extra)
        else:
            self._metrics.child(self._metrics.events_ignored, outcome.value).inc()
            logger.debug(
                "ignored %s v%d (%s)", event.type, event.version, outcome.value, extra=extra
            )
