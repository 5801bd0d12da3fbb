"""The scheduler: one leader at a time, fenced writes, every due transition applied exactly once."""

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from issuer.authority import Authority
from issuer.errors import LeaseLost
from issuer.kek import Kek
from issuer.policy import RotationPolicy
from issuer.scheduler import Scheduler
from keyherald.redis_server import RedisServer
from subscriber import redis_keys
from subscriber.clock import ManualClock
from tests.issuer.conftest import ISSUER
from tests.issuer.helpers import replay, states, stream_events

# A demo policy in seconds: one key every 100 s, published 20 s ahead, 30 s of grace.
POLICY = RotationPolicy(
    rotation_period_s=100, lead_s=20, retire_grace_s=30, max_token_ttl_s=10,
    jwks_max_age_s=5, clock_skew_s=1,
)  # fmt: skip


@pytest.fixture
async def replicas(
    redis_url: str, redis: aioredis.Redis, clock: ManualClock, kek: Kek
) -> AsyncIterator[list[Authority]]:
    """Three issuer replicas, each with its own connection, sharing one store and clock."""
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(3)]
    yield [Authority(redis=c, issuer=ISSUER, policy=POLICY, kek=kek, clock=clock) for c in clients]
    for client in clients:
        await client.aclose()


async def _assert_consistent(redis: aioredis.Redis, authority: Authority) -> list[str]:
    events = await stream_events(redis, authority)
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    assert replay(events) == states(await authority.keys())
    assert (await authority.store.head())[1] == len(events)
    return [e.type for e in events]


async def _reference(redis: aioredis.Redis, kek: Kek, rounds: int, step_s: float) -> list[str]:
    """The events a single, unraced issuer produces on the same timeline."""
    clock = ManualClock()
    alone = Authority(
        redis=redis, issuer="http://reference.test", policy=POLICY, kek=kek, clock=clock
    )
    await alone.bootstrap()
    for _ in range(rounds):
        clock.advance(step_s)
        await alone.tick()
    return [e.type for e in await stream_events(redis, alone)]


async def test_only_one_of_racing_schedulers_leads(
    replicas: list[Authority], redis: aioredis.Redis, clock: ManualClock, kek: Kek
) -> None:
    schedulers = [Scheduler(a, holder=f"replica-{i}") for i, a in enumerate(replicas)]
    await replicas[0].bootstrap()
    led: set[str] = set()
    for _ in range(12):  # 12 rounds of 40 s: several full rotations
        clock.advance(40)
        results = await asyncio.gather(*(s.run_once() for s in schedulers))
        led |= {s.holder for s, r in zip(schedulers, results, strict=True) if r}
        assert sum(1 for s in schedulers if s.token is not None) == 1
    assert len(led) == 1
    expected = await _reference(redis, kek, rounds=12, step_s=40)
    assert expected.count("key-activated") >= 4  # several full rotations in 480 s
    assert await _assert_consistent(redis, replicas[0]) == expected


async def test_racing_ticks_apply_each_transition_once_without_a_lease(
    replicas: list[Authority], redis: aioredis.Redis, clock: ManualClock, kek: Kek
) -> None:
    """Even with no lease at all (operators, a split brain), the version CAS dedupes."""
    await asyncio.gather(*(a.bootstrap() for a in replicas))
    for _ in range(12):
        clock.advance(40)
        await asyncio.gather(*(a.tick() for a in replicas))
    expected = await _reference(redis, kek, rounds=12, step_s=40)
    assert await _assert_consistent(redis, replicas[0]) == expected


async def test_deposed_leader_is_fenced_out(
    replicas: list[Authority], redis: aioredis.Redis, clock: ManualClock
) -> None:
    first, second = Scheduler(replicas[0], holder="a"), Scheduler(replicas[1], holder="b")
    await replicas[0].bootstrap()
    assert await first.ensure_lease()
    stale = first.token
    # The lease expires while "a" is paused (GC, SIGSTOP): "b" takes over with a newer token.
    await redis.delete(redis_keys.scheduler_lease(ISSUER))
    assert await second.ensure_lease()
    assert second.token is not None and stale is not None and second.token > stale
    clock.advance(81)  # the next key is due to be added
    version = (await replicas[0].store.head())[1]
    with pytest.raises(LeaseLost):
        await replicas[0].tick(fence=stale)
    assert (await replicas[0].store.head())[1] == version  # nothing written
    assert await first.run_once() == []  # and the old leader knows it is not leading
    assert [e.type for r in await second.run_once() for e in r.events] == ["key-added"]


async def test_transitions_are_not_lost_when_the_leader_dies(
    replicas: list[Authority], redis: aioredis.Redis, clock: ManualClock
) -> None:
    dead, heir = Scheduler(replicas[0], holder="dead"), Scheduler(replicas[1], holder="heir")
    await replicas[0].bootstrap()
    assert await dead.ensure_lease()
    clock.advance(150)  # the next key was due at 80 while the leader was dead
    assert await heir.run_once() == []  # the dead leader's lease is still live
    await redis.delete(redis_keys.scheduler_lease(ISSUER))  # its lease expires
    applied = await heir.run_once()
    assert [e.type for r in applied for e in r.events] == ["key-added"]
    clock.advance(20)  # late, but still published for the whole lead before it signs
    applied = await heir.run_once()
    assert [e.type for r in applied for e in r.events] == ["key-activated"]
    assert len(await _assert_consistent(redis, replicas[0])) == 4


async def test_lease_expires_in_redis(replicas: list[Authority], redis: aioredis.Redis) -> None:
    scheduler = Scheduler(replicas[0], holder="a", lease_ttl_s=5, tick_interval_s=1)
    assert await scheduler.ensure_lease()
    lease = redis_keys.scheduler_lease(ISSUER)
    assert await redis.get(lease) == f"a:{scheduler.token}".encode()
    assert 0 < await redis.pttl(lease) <= 5_000
    await scheduler.release()
    assert await redis.get(lease) is None


def test_lease_must_outlive_two_ticks(replicas: list[Authority]) -> None:
    with pytest.raises(ValueError, match="lease_ttl_s=2"):
        Scheduler(replicas[0], lease_ttl_s=2, tick_interval_s=1)


async def test_run_loop_applies_and_releases_on_cancel(
    replicas: list[Authority], redis: aioredis.Redis, clock: ManualClock
) -> None:
    scheduler = Scheduler(replicas[0], holder="loop", lease_ttl_s=1, tick_interval_s=0.01)
    await replicas[0].bootstrap()
    clock.advance(80)
    task = asyncio.create_task(scheduler.run())
    try:
        async with asyncio.timeout(5):
            while (await replicas[0].store.head())[1] < 3:  # the loop added the next key
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
    assert await redis.get(redis_keys.scheduler_lease(ISSUER)) is None


async def test_run_loop_survives_a_redis_outage(
    redis_server: RedisServer, clock: ManualClock, kek: Kek,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("issuer.scheduler.ERROR_BACKOFF_S", 0.01)
    client = aioredis.Redis.from_url(redis_server.url)
    authority = Authority(redis=client, issuer=ISSUER, policy=POLICY, kek=kek, clock=clock)
    scheduler = Scheduler(authority, holder="survivor", lease_ttl_s=1, tick_interval_s=0.01)
    await authority.bootstrap()
    task = asyncio.create_task(scheduler.run())
    try:
        redis_server.kill()
        async with asyncio.timeout(10):
            while "scheduler round failed" not in caplog.text:
                await asyncio.sleep(0.01)
        redis_server.start()  # same port, AOF: the store is still there
        clock.advance(80)  # the next key is due
        async with asyncio.timeout(10):
            while True:
                try:
                    if (await authority.store.head())[1] >= 3:
                        break
                except aioredis.ConnectionError:
                    pass
                await asyncio.sleep(0.01)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
        await client.aclose()
