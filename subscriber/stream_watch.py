"""One blocking ``XREAD`` per process for every follower of an issuer: :class:`StreamWatch`.

Each :class:`~subscriber.follower.StreamFollower` used to block in its own ``XREAD`` (every
2 s) and read the stream head after every empty reply, so an idle verifier cost about one
Redis command a second and a wakeup of its own, and 1,000 verifiers in a process a third of
a core while nothing happened. Followers of the same streams on the same Redis client (the
verifiers of a process share one, see :mod:`subscriber.clients`) now share one watch:

- the watch alone blocks in ``XREAD`` on the streams, from the ids it last read;
- when entries arrive it keeps them as one batch ``(ids before, entries, ids after)`` and
  bumps :attr:`StreamWatch.generation`; a follower whose own ids equal the batch's "before"
  takes the entries as they are (no command, no reply parsing of its own), any other reads
  for itself with a non-blocking ``XREAD`` from its own ids;
- a follower notes the generation *before* it reads, and waits only for a later one, so an
  entry written while it was reading is never missed;
- every few empty reads the watch compares the events stream's head with its ids, and tells
  followers when the stream lost entries (a flushed or restored Redis), so each checks its
  own position: no follower reads the head after an empty read;
- a failed read is handed to every waiting follower as the error it would have met itself,
  so their sessions end; the watch retries on its own, with a backoff that starts afresh for
  each outage, and a follower reconnects once the watch reads again (:meth:`recovered`), not
  before: a resync then would find the watch still failed, and the next one fetch the
  snapshot again, as fast as the issuer answers.
"""

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .cancellation import cancel_and_wait, raise_if_cancelled
from .constants import reconnect_max_s, reconnect_min_s, xread_count

logger = logging.getLogger(__name__)

__all__ = ["Batch", "StreamWatch", "acquire_watch", "release_watch"]

#: Empty reads between two checks of the events stream's head.
intact_check_every = 5

# (ids before, entries by stream, ids after)
Batch = tuple[dict[str, str], dict[str, list[Any]], dict[str, str]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class StreamWatch:
    """Blocks on ``streams`` for its followers; see the module docstring.

    :param streams: the stream keys, the events stream first.
    """

    def __init__(self, redis: aioredis.Redis, streams: tuple[str, ...], block_ms: int) -> None:
        self.redis = redis
        self.streams = streams
        self.block_ms = block_ms
        #: Bumped on every batch, every lost stream, every failure and every reconnection.
        self.generation = 0
        #: Bumped when the events stream's head fell behind the ids read (entries lost).
        self.lost = 0
        self.batch: Batch | None = None
        #: The ids the watch reads from next: a follower standing there has nothing to read.
        self.position: dict[str, str] = {}
        self.error: BaseException | None = None
        #: ``time.monotonic()`` of the last read that answered (empty or not).
        self.answered_at = -1.0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.users = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="keyherald-stream-watch"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def _bump(self) -> None:
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, generation: int, timeout_s: float) -> None:
        """Return once :attr:`generation` has moved past ``generation``, or ``timeout_s``
        passed; raise the watch's error if its last read failed."""
        raise_if_cancelled()  # else a cancellation lost in the caller's last command waits here
        if self.generation == generation and self.error is None:
            changed = self._changed
            try:
                async with asyncio.timeout(timeout_s):
                    await changed.wait()
            except TimeoutError:
                pass
        if self.error is not None:
            raise RedisError(f"stream watch failed: {self.error}") from self.error

    async def recovered(self, timeout_s: float) -> None:
        """Return once the watch reads again after a failure (at once if its last read
        answered), or after ``timeout_s``."""
        raise_if_cancelled()
        try:
            async with asyncio.timeout(timeout_s):
                while self.error is not None:
                    await self._changed.wait()
        except TimeoutError:
            pass

    def alive(self) -> bool:
        """Whether the watch's reads have been answering (the stream is reachable)."""
        return self.error is None and time.monotonic() - self.answered_at < 3 * (
            self.block_ms / 1000 + 1
        )

    async def _run(self) -> None:
        delay = reconnect_min_s
        while True:
            try:
                await self._watch()
            except (RedisError, OSError) as e:
                raise_if_cancelled()  # a cancellation lost in redis-py can surface as an error
                if self.error is None:
                    # It was reading: a new outage, so the backoff starts again from its
                    # minimum (a watch that doubled it for good would, after a few blips,
                    # leave every follower reconnect_max_s behind each one).
                    delay = reconnect_min_s
                    logger.warning(
                        "stream %s: read failed (%s: %s), retrying in %.2fs",
                        self.streams[0],
                        type(e).__name__,
                        e,
                        delay,
                    )
                else:
                    logger.debug(
                        "stream %s: read failed again (%s), retrying in %.2fs",
                        self.streams[0],
                        type(e).__name__,
                        delay,
                    )
                self.error = e
                self._bump()
                await asyncio.sleep(delay)
                delay = min(delay * 2, reconnect_max_s)

    async def _heads(self) -> dict[str, str]:
        heads = {}
        for stream in self.streams:
            newest: Any = await self.redis.xrevrange(stream, count=1)
            heads[stream] = _text(newest[0][0]) if newest else "0-0"
        return heads

    async def _watch(self) -> None:
        ids = await self._heads()
        self.position = dict(ids)
        if self.error is not None:
            logger.info("stream %s: reading again", self.streams[0])
        self.error = None
        self.answered_at = time.monotonic()
        self._bump()  # followers waiting on a failed or new watch read again
        empty = 0
        while True:
            reply = await self.redis.xread(
                dict(ids),  # type: ignore[arg-type]
                count=xread_count,
                block=self.block_ms,
            )
            raise_if_cancelled()
            self.answered_at = time.monotonic()
            by_stream = _by_stream(reply)
            if by_stream:
                empty = 0
                before = dict(ids)
                for stream, entries in by_stream.items():
                    ids[stream] = _text(entries[-1][0])
                self.batch = (before, by_stream, dict(ids))
                self.position = dict(ids)
                self._bump()
                continue
            empty += 1
            if empty % intact_check_every == 0:
                events = self.streams[0]
                head = (await self._heads())[events]
                if _key(head) < _key(ids[events]):
                    logger.warning("stream %s lost entries (head %s < %s)", events, head, ids)
                    ids = await self._heads()
                    self.position = dict(ids)
                    self.lost += 1
                    self._bump()


def _by_stream(reply: Any) -> dict[str, list[Any]]:
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else reply
    return {_text(stream): list(entries) for stream, entries in pairs if entries}


# One watch per (Redis client, streams, block) and event loop. The client is held, so its
# id cannot be reused while the watch lives.
_watches: dict[tuple[Any, ...], StreamWatch] = {}


def acquire_watch(redis: aioredis.Redis, streams: tuple[str, ...], block_ms: int) -> StreamWatch:
    """The watch of ``streams`` on ``redis`` for the running loop, started on first use."""
    key = (asyncio.get_running_loop(), id(redis), streams, block_ms)
    watch = _watches.get(key)
    if watch is None:
        watch = _watches[key] = StreamWatch(redis, streams, block_ms)
        watch.start()
    watch.users += 1
    return watch


async def release_watch(watch: StreamWatch) -> None:
    """Give back a watch from :func:`acquire_watch`; the last user stops it."""
    watch.users -= 1
    if watch.users > 0:
        return
    for key, value in list(_watches.items()):
        if value is watch:
            del _watches[key]
    await watch.stop()
