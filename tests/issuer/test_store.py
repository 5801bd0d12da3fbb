"""The store: one atomic commit (state and event both present or both absent), age-trimmed
stream, and the persistence check."""

import asyncio
import functools
import logging
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from issuer.authority import Authority
from issuer.errors import AlreadyRecorded, StoreError, VersionConflict
from issuer.kek import Kek
from issuer.policy import RotationPolicy
from issuer.store import Receipt, check_persistence
from keyherald.redis_server import RedisServer
from subscriber.clock import ManualClock
from subscriber.redis_keys import idempotency_record
from tests.issuer.conftest import ISSUER
from tests.issuer.helpers import replay, states, stream_events


async def test_failed_write_leaves_neither_state_nor_event(
    authority: Authority, redis: aioredis.Redis
) -> None:
    before = await authority.store.load()
    stream = authority.store.stream_key
    entries = await redis.xrange(stream)
    # Sabotage the stream key: the XADD would fail after the record writes, and Redis does
    # not roll a script back, so the script must refuse before writing anything.
    await redis.delete(stream)
    await redis.set(stream, "not a stream")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await authority.rotate()
    after = await authority.store.load()
    assert after.version == before.version and after.keys == before.keys
    await redis.delete(stream)
    for entry_id, fields in entries:
        await redis.xadd(stream, fields, id=entry_id)
    await authority.rotate()  # and the store works again
    assert replay(await stream_events(redis, authority)) == states(await authority.keys())


async def test_stale_version_writes_nothing(authority: Authority, redis: aioredis.Redis) -> None:
    snap = await authority.snapshot()
    await authority.rotate()  # another writer moves the version
    with pytest.raises(VersionConflict):
        await authority.store.commit(
            expected_version=snap.version, expected_epoch=snap.epoch, records=[],
            events=[{"type": "key-added", "version": str(snap.version + 1), "jws": "x"}],
            retention_s=86_400,
        )  # fmt: skip
    assert len(await redis.xrange(authority.store.stream_key)) == snap.version + 1


async def test_a_commit_under_a_recorded_idempotency_key_writes_nothing(
    authority: Authority, redis: aioredis.Redis
) -> None:
    snap = await authority.snapshot()
    name = idempotency_record(ISSUER, "k")
    commit = functools.partial(
        authority.store.commit, expected_version=snap.version, expected_epoch=snap.epoch,
        records=[], events=[{"type": "key-added", "version": str(snap.version + 1), "jws": "x"}],
        retention_s=86_400,
    )  # fmt: skip
    await redis.set(name, "earlier")
    for receipt in (Receipt(name, "mine", 60_000), Receipt(name, "mine", 60_000, "other")):
        with pytest.raises(AlreadyRecorded) as found:
            await commit(receipt=receipt)
        assert found.value.raw == "earlier"
        assert await authority.store.head() == (snap.epoch, snap.version)
    # The expired record the caller read, and only that one, is replaced with the change.
    assert await commit(receipt=Receipt(name, "mine", 60_000, "earlier")) == snap.version + 1
    assert await redis.get(name) == b"mine" and 0 < await redis.pttl(name) <= 60_000


async def test_stream_is_trimmed_by_age_not_count(
    authority: Authority, redis: aioredis.Redis
) -> None:
    stream = authority.store.stream_key
    ancient = b"1-0"  # 1970: far older than any retention
    await redis.xadd(stream, {"type": "key-added", "version": "0", "jws": "x"}, id=ancient)
    await authority.snapshot()
    for _ in range(5):
        await authority.rotate()
    ids = [entry_id for entry_id, _ in await redis.xrange(stream)]
    assert ancient not in ids
    assert len(ids) == 2 + 5  # every recent event kept, however many


async def test_both_present_or_both_absent_across_a_crash(
    redis_server: RedisServer, kek: Kek
) -> None:
    """Kill -9 Redis in the middle of a burst of changes; after restart (AOF), every event
    has its state and every state change its event."""
    clock = ManualClock()
    client = aioredis.Redis.from_url(redis_server.url)
    authority = Authority(redis=client, issuer=ISSUER, policy=RotationPolicy(), kek=kek,
                          clock=clock)  # fmt: skip
    await authority.bootstrap()

    async def churn() -> None:
        for _ in range(50):
            await authority.rotate()

    tasks = [asyncio.create_task(churn()) for _ in range(4)]
    async with asyncio.timeout(10):
        while (await authority.store.head())[1] < 12:
            await asyncio.sleep(0)
    redis_server.kill()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, aioredis.ConnectionError | OSError) for r in results), results
    await client.aclose()

    redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        authority = Authority(redis=client, issuer=ISSUER, policy=RotationPolicy(), kek=kek,
                              clock=clock)  # fmt: skip
        snap = await authority.store.load()
        events = await stream_events(client, authority)
        assert snap.version >= 12
        assert [e.version for e in events] == list(range(1, snap.version + 1))
        assert replay(events) == states(list(snap.keys.values()))
    finally:
        await client.aclose()


async def test_persistence_warning_when_redis_keeps_nothing(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # The session server runs with appendonly=no and save="".
    assert await check_persistence(redis) is False
    assert any(
        r.levelno == logging.WARNING and "LOST on a Redis restart" in r.getMessage()
        for r in caplog.records
    )


async def test_no_warning_with_aof(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await check_persistence(client) is True
    finally:
        await client.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class _NoConfigServer(RedisServer):
    def _args(self) -> list[str]:
        return [*super()._args(), "--rename-command", "CONFIG", ""]


@pytest.fixture
def no_config_server() -> Iterator[RedisServer]:
    with _NoConfigServer(persistence="none") as server:
        yield server


async def test_persistence_check_skipped_when_config_is_forbidden(
    no_config_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis.from_url(no_config_server.url)
    try:
        with caplog.at_level(logging.INFO):
            assert await check_persistence(client) is None
    finally:
        await client.aclose()
    assert "cannot check Redis persistence" in caplog.text


async def test_records_of_long_gone_keys_are_forgotten(
    authority: Authority, redis: aioredis.Redis, clock: ManualClock
) -> None:
    from issuer.authority import KEEP_ENDED_RECORDS

    withdrawn = []
    for _ in range(KEEP_ENDED_RECORDS + 5):
        clock.advance(1)
        kid = (await authority.rotate()).events[0].kid
        await authority.retire(kid)
        withdrawn.append(kid)
    keys = await authority.keys()
    assert [k.state for k in keys].count("active") == 1
    assert len(keys) == 1 + KEEP_ENDED_RECORDS
    assert {k.kid for k in keys if k.state == "retired"} == set(withdrawn[-KEEP_ENDED_RECORDS:])
    # The history is still on the stream, and the version counts every change.
    assert (await authority.store.head())[1] == 2 + 2 * len(withdrawn)
