"""The consumer group: at-least-once across crashes, peers, Redis restarts and poison."""

import asyncio
import time

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.exceptions import ResponseError

from relay.consumer import StreamConsumer
from subscriber.events import Event, sign_event
from subscriber.redis_keys import event_stream
from tests.relay.conftest import ISSUER, MiniIssuer, build_relay
from tests.relay.servers import Receiver, Server, until


async def register(relay, receiver, url):
    partner, secret = await relay.partners.register(url)
    receiver.secrets.append(secret)
    return partner


async def test_group_creation_ignores_only_busygroup(redis, issuer) -> None:
    async def noop(*args):
        return None

    consumer = StreamConsumer(redis, ISSUER, issuer.announce_keys, noop, group="g", consumer="c")
    await consumer.ensure_group()
    await consumer.ensure_group()
    await redis.delete(consumer.stream)
    await redis.set(consumer.stream, "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await consumer.ensure_group()


async def test_own_pending_entries_are_read_first_after_a_restart(
    redis, issuer, make_relay
) -> None:
    receiver = Receiver()
    relay = make_relay(consumer="relay-1")
    async with Server(receiver) as server:
        await register(relay, receiver, server.url)
        await relay.consumer.ensure_group()
        await issuer.add_key()
        await issuer.add_key()
        # relay-1 read both entries and crashed before queueing them.
        await redis.xreadgroup("relay", "relay-1", {event_stream(ISSUER): ">"}, count=10)
        async with relay:
            await until(lambda: len(receiver.accepted) == 2)
        assert await redis.xpending(event_stream(ISSUER), "relay") == {
            "pending": 0,
            "min": None,
            "max": None,
            "consumers": [],
        }
    assert [d.version for d in receiver.got] == [1, 2]


async def test_a_dead_peers_entries_are_claimed_after_the_idle_time(
    redis, issuer, make_relay
) -> None:
    receiver = Receiver()
    relay = make_relay(consumer="relay-2", idle_before_claim_s=0.4, deadline_s=0.3, lease_s=0.5)
    async with Server(receiver) as server:
        await register(relay, receiver, server.url)
        await relay.consumer.ensure_group()
        await issuer.add_key()
        await redis.xreadgroup("relay", "relay-dead", {event_stream(ISSUER): ">"}, count=10)
        taken = time.monotonic()
        async with relay:
            await until(lambda: len(receiver.accepted) == 1)
            waited = time.monotonic() - taken
    assert waited >= 0.4
    assert receiver.got[0].version == 1


async def test_group_is_recreated_after_redis_loses_it() -> None:
    """A Redis restart without persistence loses the group (NOGROUP on read): the relay
    recreates it and delivers what the issuer publishes next."""
    from keyherald.redis_server import RedisServer

    with RedisServer(persistence="none") as server_redis:
        client = aioredis.Redis.from_url(server_redis.url)
        issuer = MiniIssuer(client)
        receiver = Receiver()
        transport = httpx.ASGITransport(app=issuer.app)
        async with (
            httpx.AsyncClient(transport=transport) as jwks_http,
            Server(receiver) as server,
        ):
            relay = build_relay(client, issuer, jwks_http)
            async with relay:
                await register(relay, receiver, server.url)
                await issuer.add_key()
                await until(lambda: len(receiver.accepted) == 1)
                server_redis.kill()
                server_redis.start()
                # Everything is gone; the operator registers the partner again.
                await until(_registers(relay, receiver, server.url), timeout=10)
                await issuer.add_key()
                await until(lambda: len(receiver.accepted) == 2, timeout=10)
        await client.aclose()
    assert [d.version for d in receiver.accepted] == [1, 2]


def _registers(relay, receiver, url):
    async def attempt():
        try:
            await register(relay, receiver, url)
        except (aioredis.ConnectionError, OSError):
            return False
        return True

    return attempt


async def test_a_forged_entry_is_dead_lettered_and_does_not_block(
    redis, issuer, make_relay
) -> None:
    receiver = Receiver()
    relay = make_relay()
    async with Server(receiver) as server:
        await register(relay, receiver, server.url)
        forged = Event("key-added", ISSUER, issuer.epoch, 1, "kid", 1.0, {"jwk": {}, "alg": "x"})
        fields = sign_event(forged, Ed25519PrivateKey.generate(), issuer.announce_jwk["kid"])
        await redis.xadd(event_stream(ISSUER), fields)
        await issuer.add_key()
        async with relay:
            await until(lambda: len(receiver.accepted) == 1)
            dead = await redis.xrange(relay.deliverer.store.dead_key)
    assert receiver.got[0].version == 1
    assert receiver.got[0].json["data"]["event"]["event_id"] != forged.event_id
    assert len(dead) == 1 and dead[0][1][b"reason"] == b"forged_event"


async def test_an_entry_that_keeps_failing_is_dead_lettered_after_n_attempts(redis, issuer) -> None:
    calls = []

    async def broken(event, jws, group, entry_id):
        calls.append(entry_id)
        raise RuntimeError("handler bug")

    consumer = StreamConsumer(
        redis,
        ISSUER,
        issuer.announce_keys,
        broken,
        group="relay",
        consumer="c1",
        block_ms=10,
        max_attempts=3,
        retry_interval_s=0.0,
    )
    await consumer.ensure_group()
    await issuer.add_key()
    for _ in range(6):
        await consumer.poll()
    dead = await redis.xrange(consumer._dead.dead_key)
    assert len(calls) == 3
    assert len(dead) == 1 and dead[0][1][b"reason"] == b"too_many_attempts"
    assert (await redis.xpending(consumer.stream, "relay"))["pending"] == 0


async def test_a_flushall_under_a_blocked_read_is_survived(redis, issuer, make_relay) -> None:
    """FLUSHALL while XREADGROUP blocks answers ``UNBLOCKED``: the consumer recreates the group
    and keeps reading (the operator registers the partner again, the issuer starts over)."""
    receiver = Receiver()
    relay = make_relay(block_ms=2_000)
    async with Server(receiver) as server, relay:
        await register(relay, receiver, server.url)
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 1)
        await asyncio.sleep(0.1)  # the consumer is back in its blocking read
        await redis.flushall()
        await register(relay, receiver, server.url)
        issuer.epoch = "epoch-2"
        issuer.version = 0
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 2, timeout=10)
        assert all(not t.done() for t in relay._tasks)
    assert [d.json["data"]["event"]["epoch"] for d in receiver.accepted] == ["epoch-1", "epoch-2"]


async def test_an_unexpected_redis_error_stops_the_relay_visibly(redis, make_relay, caplog) -> None:
    relay = make_relay()
    async with relay:
        await redis.delete(relay.consumer.stream)
        await redis.set(relay.consumer.stream, "not a stream")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            async with asyncio.timeout(5):
                await relay.wait()
        assert "relay task relay-consumer stopped" in caplog.text
        await redis.delete(relay.consumer.stream)


async def test_an_event_under_a_new_announcement_key_is_delivered_after_a_refetch(
    redis, issuer, make_relay
) -> None:
    """An issuer that lost its store signs with a new announcement key: the relay refetches
    the published keys once, trusts the new one and delivers; a forged entry after it costs no
    second fetch within the cooldown and is dead-lettered."""
    new_key = Ed25519PrivateKey.generate()
    published = {**issuer.announce_keys}
    fetches = []

    async def refresh():
        fetches.append(time.monotonic())
        return published

    receiver = Receiver()
    relay = make_relay(refresh_announce_keys=refresh)
    async with Server(receiver) as server:
        await register(relay, receiver, server.url)
        await issuer.add_key()  # v1, signed by the key the relay started with
        issuer.signing_key = new_key
        issuer.announce_jwk = {**issuer.announce_jwk, "kid": "rotated-announcement-kid"}
        published["rotated-announcement-kid"] = new_key.public_key()
        await issuer.add_key()  # v2, signed by a key the relay has not seen
        forged = Event("key-added", ISSUER, issuer.epoch, 3, "k", 1.0, {"jwk": {}, "alg": "x"})
        await redis.xadd(
            event_stream(ISSUER),
            sign_event(forged, Ed25519PrivateKey.generate(), "another-unknown-kid"),
        )
        async with relay:
            await until(lambda: len(receiver.accepted) == 2)
            dead_key = relay.deliverer.store.dead_key
            await until_async(lambda: _count(redis, dead_key), 1)
    assert [d.version for d in receiver.got] == [1, 2]
    assert len(fetches) == 1
    assert "rotated-announcement-kid" in relay.announce_keys


async def _count(redis, key) -> int:
    return len(await redis.xrange(key))


async def until_async(probe, expected, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await probe() != expected:
        assert time.monotonic() < deadline, f"timed out waiting for {expected}"
        await asyncio.sleep(0.02)


async def test_idle_consumers_with_nothing_pending_are_removed(redis, issuer) -> None:
    async def noop(*args):
        return None

    consumer = StreamConsumer(
        redis, ISSUER, issuer.announce_keys, noop, group="relay", consumer="me",
        idle_before_claim_s=0.3,
    )  # fmt: skip
    await consumer.ensure_group()
    await issuer.add_key()
    stream = consumer.stream
    await redis.xgroup_createconsumer(stream, "relay", "host-111")  # restarted under a new name
    await redis.xreadgroup("relay", "host-222", {stream: ">"}, count=1)  # died holding an entry
    await redis.xgroup_createconsumer(stream, "relay", "me")
    assert await consumer.prune_consumers() == []  # nobody idle long enough yet

    async def pruned():
        return await consumer.prune_consumers() == ["host-111"]

    await until(pruned, timeout=5)
    await redis.xgroup_createconsumer(stream, "relay", "host-333")  # just started: kept
    assert await consumer.prune_consumers() == []
    names = {c["name"] for c in await redis.xinfo_consumers(stream, "relay")}
    assert names == {b"me", b"host-222", b"host-333"}
