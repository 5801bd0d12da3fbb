"""Idle verifiers share one blocking read: counted at the Redis server, not assumed."""

import asyncio
from typing import Any

import redis.asyncio as aioredis

from subscriber.presence import Presence, live_verifiers
from tests.subscriber.conftest import ISSUER, Issuer, eventually


async def calls(redis: aioredis.Redis, *commands: str) -> dict[str, int]:
    stats: dict[str, Any] = await redis.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}


async def test_idle_verifiers_of_a_process_share_one_blocking_read(issuer: Issuer) -> None:
    verifiers = [issuer.verifier(block_ms=100, presence=False) for _ in range(20)]
    for verifier in verifiers:
        await verifier.start()
    await asyncio.sleep(0.3)  # every follower has read once and waits on the watch
    before = await calls(issuer.redis, "xread", "xrevrange")
    await asyncio.sleep(1.0)  # ten blocking periods, nothing happening
    after = await calls(issuer.redis, "xread", "xrevrange")
    xread = after["xread"] - before["xread"]
    xrevrange = after["xrevrange"] - before["xrevrange"]
    # One watch: about ten reads, and a head check every five empty ones. Alone, each of the
    # twenty followers would have sent ten reads and ten head checks.
    assert xread <= 14, xread
    assert xrevrange <= 4, xrevrange


async def test_an_event_reaches_every_follower_through_the_watchs_read(issuer: Issuer) -> None:
    verifiers = [issuer.verifier(block_ms=100, presence=False) for _ in range(20)]
    for verifier in verifiers:
        await verifier.start()
    await asyncio.sleep(0.3)
    before = await calls(issuer.redis, "xread")
    kid = (await issuer.authority.rotate()).events[-1].kid
    for verifier in verifiers:
        await eventually(lambda v=verifier: kid in v.keyset.view.keys, what="the new key")
    reads = (await calls(issuer.redis, "xread"))["xread"] - before["xread"]
    # The watch read the event once and every follower took it from there.
    assert reads <= 6, reads


async def test_a_heartbeat_is_one_command(issuer: Issuer) -> None:
    presence = Presence(issuer.redis, "https://issuer.test", "host:1:abc", issuer.clock, 30.0)
    async with issuer.verifier(presence=False) as verifier:  # only our beats below
        await presence.beat(verifier.heartbeat_record())  # loads the script
        before = await calls(issuer.redis, "evalsha", "eval", "multi", "exec", "zadd")
        await presence.beat(verifier.heartbeat_record())
        after = await calls(issuer.redis, "evalsha", "eval", "multi", "exec", "zadd")
    sent = {c: after[c] - before[c] for c in after}
    assert sent == {"evalsha": 1, "eval": 0, "multi": 0, "exec": 0, "zadd": 1}, sent


async def test_idle_heartbeats_of_a_process_are_refreshed_in_one_call(issuer: Issuer) -> None:
    options = {"heartbeat_interval_s": 0.2, "heartbeat_ttl_s": 0.6, "block_ms": 100}
    verifiers = [issuer.verifier(**options) for _ in range(20)]
    for verifier in verifiers:
        await verifier.start()
    await asyncio.sleep(0.3)  # every instance has written its own first record
    before = await calls(issuer.redis, "evalsha", "eval")
    for _ in range(5):  # five refresh periods; the records' clock moves 1.5 s, 2.5 TTLs
        await asyncio.sleep(0.2)
        issuer.clock.advance(0.3)
    after = await calls(issuer.redis, "evalsha", "eval")
    sent = sum(after.values()) - sum(before.values())
    # One call per period for the twenty (alone: twenty per period, a hundred here).
    assert sent <= 8, sent
    live = await live_verifiers(issuer.redis, ISSUER, issuer.clock())
    assert {v.instance_id for v in verifiers} <= {r["instance_id"] for r in live}


async def test_verifiers_closed_while_they_read_stop_at_once(issuer: Issuer) -> None:
    # Closed just after it started, or as an event arrives, a verifier's follower and the
    # watch are sending their next commands: on Python 3.11 the asyncio.wait_for redis-py
    # sends through then loses the cancellation, and the watch blocked on for block_ms, the
    # follower waited idle_wake_s (10 s) before it noticed.
    for rotate in (False, True) * 5:
        verifiers = [issuer.verifier(block_ms=5_000, presence=False) for _ in range(10)]
        for verifier in verifiers:
            await verifier.start()
        if rotate:
            await issuer.authority.rotate()
        async with asyncio.timeout(1.0):
            await asyncio.gather(*(verifier.aclose() for verifier in verifiers))
