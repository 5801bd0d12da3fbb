"""Benign faults that look like attacks: a frozen stream, and a failover that loses
acknowledged writes. Real redis-server processes (a primary and a replica) on loopback."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import RedisServer
from subscriber.clock import ManualClock
from subscriber.errors import InvalidToken, KeyNotUsable
from subscriber.events import parse_event
from subscriber.redis_keys import event_stream
from tests.subscriber.conftest import ISSUER, eventually, running_issuer

pytestmark = pytest.mark.timeout(90)


@contextlib.contextmanager
def primary_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer(persistence="none") as primary, RedisServer(persistence="none") as replica:
        yield primary, replica


@contextlib.asynccontextmanager
async def clients(*urls: str) -> AsyncIterator[list[aioredis.Redis]]:
    made = [aioredis.Redis.from_url(url, socket_timeout=5.0) for url in urls]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


async def replicate(replica: aioredis.Redis, primary: RedisServer) -> None:
    # Redis 7 waits 5 s before a diskless full sync, to batch replicas: not here.
    await replica.config_set("repl-diskless-sync-delay", 0)
    async with clients(primary.url) as (client,):
        await client.config_set("repl-diskless-sync-delay", 0)
    await replica.replicaof("127.0.0.1", primary.port)

    async def in_sync() -> bool:
        info = await replica.info("replication")
        return info.get("master_link_status") == "up"

    await eventually(in_sync, what="replica in sync")


async def test_a_frozen_stream_degrades_the_verifier_which_polls_the_revocation() -> None:
    clock = ManualClock()
    with primary_and_replica() as (primary, replica_server):
        async with clients(primary.url, replica_server.url) as (p, r):
            await replicate(r, primary)
            async with running_issuer(p, clock) as issuer:
                verifier = issuer.verifier(
                    redis=r, freshness_bound_s=10.0, block_ms=100,
                    min_poll_interval_s=0.05, max_poll_interval_s=0.2,
                )  # fmt: skip
                async with verifier:
                    await issuer.fresh()
                    assert verifier.health().state == "live"
                    token = await issuer.token()
                    kid = (await issuer.authority.signing_key()).kid
                    # The verifier's Redis stops receiving entries; its connection stays up.
                    await r.replicaof("NO", "ONE")
                    await issuer.authority.revoke(kid)
                    await issuer.authority.publish_freshness()
                    await asyncio.sleep(0.3)
                    assert verifier.health().state == "live"  # it cannot know yet
                    assert verifier.verify(token)
                    clock.advance(10.5)  # past the freshness bound, nothing more
                    await eventually(lambda: verifier.health().state == "degraded")

                    def refused() -> bool:
                        try:
                            verifier.verify(token)
                        except KeyNotUsable as e:
                            return e.reason == "revoked_key"
                        return False

                    await eventually(refused, what="revocation learnt by polling")


async def stream_versions(client: aioredis.Redis, keys: dict) -> dict[int, str]:
    """version -> digest of every event on the stream (parsed and signature-checked)."""
    seen: dict[int, str] = {}
    for _, fields in await client.xrange(event_stream(ISSUER)):
        event = parse_event(fields, keys, issuer=ISSUER)
        assert seen.get(event.version, event.digest) == event.digest, "a version reused"
        seen[event.version] = event.digest or ""
    return seen


async def test_a_failover_that_loses_an_acknowledged_rotation_rejects_no_valid_token() -> None:
    """Replication is asynchronous: a key-added acknowledged by the primary is lost when the
    primary is resynced from a replica that never got it (what a Sentinel failover does to
    the old primary). The issuer keeps its high-water mark and writes the lost state back;
    no valid token is rejected and no version ever carries two contents."""
    clock = ManualClock()
    with primary_and_replica() as (primary, replica_server):
        async with clients(primary.url, replica_server.url) as (p, r):
            await replicate(r, primary)
            async with running_issuer(p, clock) as issuer:
                # The test jumps the clock by the lead (days): staleness is not what it tests.
                month_s = 30 * 86_400.0
                async with issuer.verifier(block_ms=100, max_staleness_s=month_s) as verifier:
                    await issuer.fresh()
                    rejected: list[str] = []
                    tokens = [await issuer.token()]
                    stop = asyncio.Event()

                    async def load() -> None:
                        while not stop.is_set():
                            for token in list(tokens[-5:]):
                                try:
                                    verifier.verify(token)
                                except InvalidToken as e:
                                    rejected.append(e.reason)
                            await asyncio.sleep(0.005)

                    loader = asyncio.create_task(load())
                    announce = verifier._follower.announcement_keys
                    # The replica stops replicating; the next write is the primary's alone.
                    await r.replicaof("NO", "ONE")
                    lost = await issuer.authority.rotate()
                    lost_kid = lost.events[-1].kid
                    await eventually(lambda: lost_kid in verifier.keyset.view.keys)
                    before = await stream_versions(p, announce)
                    # Failover: the primary takes the replica's data, losing the rotation.
                    await p.replicaof("127.0.0.1", replica_server.port)
                    await eventually(lambda: _synced(p), timeout_s=15, what="old primary resynced")
                    await p.replicaof("NO", "ONE")
                    # The issuer's next read finds the store behind its mark and restores it.
                    tokens.append(await issuer.token())
                    snap = await issuer.authority.snapshot()
                    # The lost commit itself was written back: same version, same content.
                    assert lost_kid in snap.keys and snap.version == lost.version
                    await issuer.authority.publish_freshness()
                    await eventually(lambda: verifier.keyset.version == snap.version)
                    assert lost_kid in verifier.keyset.view.keys
                    # The rotation goes on: the written-back key activates and signs. (Tokens
                    # of before the jump in time have expired: they are no longer "valid".)
                    tokens.clear()
                    await issuer.advance(issuer.settings.lead_s)  # tick, then freshness taken
                    assert (await issuer.authority.signing_key()).kid == lost_kid
                    tokens.append(await issuer.token())
                    await eventually(lambda: verifier.keyset.version > snap.version)
                    await asyncio.sleep(0.2)
                    stop.set()
                    await loader
                    assert rejected == []
                    after = await stream_versions(p, announce)
                    for version in before.keys() & after.keys():
                        assert before[version] == after[version], f"version {version} reused"
                    assert sorted(after) == list(range(1, verifier.keyset.version + 1))


async def _synced(client: aioredis.Redis) -> bool:
    info = await client.info("replication")
    return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
