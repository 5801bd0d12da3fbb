"""The issuer's public documents (JWKS, metadata) served from memory, kept current by its stream.

Without this layer every ``GET /.well-known/jwks.json`` read Redis (the key-set head), so a
``304`` cost as much as a ``200``. Here the documents the authority renders
(:meth:`Authority.jwks`, :meth:`Authority.metadata`, whatever they contain) are kept in memory
and answered with no Redis round trip, for as long as they are known to be current:

- :meth:`PublishedDocuments.follow` (run by the app's lifespan) blocks on the issuer's own
  event stream; every change, whoever commits it (this replica's admin API or scheduler,
  another replica), is an event, and the documents are rendered again when one arrives;
- when a blocking read returns empty, one ``(epoch, version)`` check notices what leaves no
  event (a flushed or rebuilt store);
- an admin change in this process calls :meth:`PublishedDocuments.changed` before it
  answers, so its caller reads its own write (through the authority, until the follower
  has rendered the new documents: re-rendering in the admin call doubled its cost).

Whenever currency is not known (no follower: an app used without its lifespan, as tests do
with ``httpx.ASGITransport``; Redis lost; a re-render failed), requests go through the
authority exactly as before, which reads the head and serves its last documents while Redis
is unreachable.
"""

import asyncio
import logging
from typing import Any, TypeAlias

from redis.exceptions import RedisError

from subscriber.cancellation import raise_if_cancelled
from subscriber.follower import effective_block_ms
from subscriber.jws import compact_json
from subscriber.redis_keys import event_stream

from .authority import Authority
from .errors import StoreError
from .jwks import JwksDocument, SignedSnapshot

logger = logging.getLogger(__name__)

XReadReply: TypeAlias = list[Any] | dict[Any, Any] | None

#: XREAD BLOCK of the follower; an empty read is followed by one head check.
block_ms = 1_000
reconnect_min_s, reconnect_max_s = 0.05, 2.0


class PublishedDocuments:
    """JWKS and metadata of one authority, from memory while the stream says they are current.

    :param authority: renders the documents (and reads Redis) when memory is not current.
    """

    def __init__(self, authority: Authority, *, block_ms: int = block_ms) -> None:
        self._authority = authority
        self._block_ms = block_ms
        self._stream = event_stream(authority.issuer)
        self._jwks: JwksDocument | None = None
        self._metadata: bytes | None = None
        self._following = False
        self._fresh = False
        self._generation = 0
        self._head_read: asyncio.Future[bool] | None = None

    @property
    def fresh(self) -> bool:
        """Whether requests are answered from memory right now."""
        return self._fresh

    async def jwks(self, *, revalidate: bool = False) -> JwksDocument:
        """The current JWKS document.

        :param revalidate: check the store's ``(epoch, version)`` first (one Redis read),
            for a request that must not get a copy behind the store (``no-cache``).
        """
        if self._jwks is not None and (await self._current() if revalidate else self._fresh):
            return self._jwks
        return await self._authority.jwks()

    async def metadata(self, *, revalidate: bool = False) -> bytes:
        """The current metadata document, encoded; ``revalidate`` as for :meth:`jwks`."""
        if self._metadata is not None and (await self._current() if revalidate else self._fresh):
            return self._metadata
        return _encode(await self._authority.metadata())

    async def snapshot(self, *, revalidate: bool = False) -> SignedSnapshot:
        """The signed key-set snapshot: the authority's last one while it is young and of
        the version in memory; ``revalidate`` as for :meth:`jwks`."""
        signed = self._authority.young_signed_snapshot()
        current = self._jwks
        if (
            signed is not None
            and current is not None
            and (signed.epoch, signed.version) == (current.epoch, current.version)
            and (await self._current() if revalidate else self._fresh)
        ):
            return signed
        return await self._authority.signed_snapshot()

    async def _current(self) -> bool:
        # Requests that arrive together share one read of the store's head, which starts
        # after each of them arrived: a thousand verifiers starting at once cost a few reads,
        # not a thousand (nor a thousand pooled connections).
        pending = self._head_read
        if pending is None:
            pending = self._head_read = asyncio.ensure_future(self._read_head())
        return await asyncio.shield(pending)

    async def _read_head(self) -> bool:
        await asyncio.sleep(0)  # the requests that arrived with this one join it
        self._head_read = None  # later ones start the next read
        # Both documents are functions of the key set at (epoch, version), rendered together.
        try:
            epoch, version = await self._authority.store.head()
        except (RedisError, OSError):
            return False  # the authority's path decides: its last documents, or the error
        current = self._jwks
        return (
            current is not None
            and (epoch or "", version) == (current.epoch, current.version)
            and self._authority.at_mark((epoch, version))
        )

    def changed(self) -> None:
        """A change was committed in this process: answer through the authority until the
        follower has rendered again (its event, or its next idle check, within a block)."""
        self._invalidate()

    def _invalidate(self) -> None:
        self._generation += 1
        self._fresh = False

    async def _refresh(self) -> None:
        generation = self._generation
        jwks = await self._authority.jwks()
        metadata = _encode(await self._authority.metadata())
        if generation != self._generation:
            return  # a newer change came in meanwhile: its own refresh decides
        self._jwks, self._metadata = jwks, metadata
        self._fresh = self._following

    async def follow(self) -> None:
        """Keep the documents current from the stream until cancelled."""
        delay = reconnect_min_s
        try:
            while True:
                try:
                    await self._follow_once()
                except (RedisError, OSError, StoreError) as e:
                    # A store that does not authenticate is the authority's to refuse (503),
                    # so requests go through it until a render succeeds again.
                    raise_if_cancelled()  # redis-py can turn a cancellation into an error
                    self._following = False
                    self._invalidate()
                    logger.warning("documents not kept in memory (%s): read per request", e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, reconnect_max_s)
                else:
                    delay = reconnect_min_s
        finally:
            self._following = False
            self._invalidate()

    async def _follow_once(self) -> None:
        # Returns when the store moved without an event (flushed or rebuilt): start over.
        redis = self._authority.redis
        block = effective_block_ms(redis, self._block_ms)
        newest = await redis.xrevrange(self._stream, count=1)
        last_id: Any = newest[0][0] if newest else "0-0"
        self._following = True
        self._invalidate()
        await self._refresh()
        while True:
            reply: XReadReply = await redis.xread({self._stream: last_id}, count=100, block=block)
            raise_if_cancelled()
            if reply:
                # RESP2 answers [[stream, entries]], RESP3 {stream: entries}.
                entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
                last_id = entries[-1][0]
                self._invalidate()
                await self._refresh()
                continue
            if not await self._current():
                return
            if not self._fresh:  # a refresh after an admin change failed: try again now
                await self._refresh()


def _encode(metadata: dict[str, Any]) -> bytes:
    return compact_json(metadata)
