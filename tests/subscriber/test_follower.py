"""The follower on its own, with hand-signed events: gaps, trims, reordering, forgeries."""

import asyncio
from typing import Any

import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from subscriber.clock import ManualClock
from subscriber.events import Event, announcement_jwk, load_announcement_keys, sign_event
from subscriber.follower import StreamFollower, effective_block_ms
from subscriber.keyset import KeySet
from subscriber.metrics import metrics_for
from tests.subscriber.conftest import eventually
from tests.subscriber.test_keyset import ISSUER, added, chained, es256_jwk, snapshot

STREAM = "keyherald:{test}:events"


class Rig:
    """A follower whose snapshot is one the test controls."""

    def __init__(self, redis: aioredis.Redis, clock: ManualClock) -> None:
        self.redis = redis
        self.signing_key = Ed25519PrivateKey.generate()
        self.announce = announcement_jwk(self.signing_key.public_key())
        self.keyset = KeySet(ISSUER)
        self.doc: Any = None
        self.refresh_requests: list[str] = []
        self.metrics = metrics_for(CollectorRegistry())
        self.follower = StreamFollower(
            redis=redis,
            stream=STREAM,
            keyset=self.keyset,
            issuer=ISSUER,
            announcement_keys=load_announcement_keys([self.announce]),
            refresh_jwks=self.refresh,
            request_refresh=self.refresh_requests.append,
            on_connected=lambda connected: None,
            on_applied=lambda event, now: None,
            clock=clock,
            metrics=self.metrics,
            block_ms=100,
        )

    async def refresh(self) -> None:
        self.keyset.replace_from_snapshot(self.doc, 0.0)

    async def publish(self, event: Event, key: Ed25519PrivateKey | None = None) -> str:
        fields = sign_event(event, key or self.signing_key, self.announce["kid"])
        return (await self.redis.xadd(STREAM, fields)).decode()  # type: ignore[no-any-return]

    def ignored(self) -> float:
        return self.metrics.value("keyherald_events_ignored_total", outcome="ignored")

    def resyncs(self, cause: str) -> float:
        return self.metrics.value("keyherald_resyncs_total", cause=cause)


async def run_follower(rig: Rig) -> "asyncio.Task[None]":
    await rig.follower.resync("bootstrap")
    return asyncio.create_task(rig.follower.run(synced=True))


async def stop(task: "asyncio.Task[None]") -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_stream_trimmed_past_our_position_resyncs(redis, clock) -> None:
    rig = Rig(redis, clock)
    k0, k1, k2 = es256_jwk(), es256_jwk(), es256_jwk()
    rig.doc = start = snapshot(1, "e1", {k0["kid"]: "active"}, k0)
    await rig.follower.resync("bootstrap")
    # Two events are committed and the stream trimmed past the first before we read it.
    second, third_event = chained(start, added(k1, 2), added(k2, 3))
    await rig.publish(second)
    third = await rig.publish(third_event)
    await redis.xtrim(STREAM, minid=third, approximate=False)
    rig.doc = snapshot(3, "e1", {k0["kid"]: "active", k1["kid"]: "pending", k2["kid"]: "pending"},
                   k0, k1, k2)  # fmt: skip
    task = asyncio.create_task(rig.follower.run(synced=True))
    try:
        await eventually(lambda: rig.keyset.version == 3, what="resynced")
        assert set(rig.keyset.view.keys) == {k0["kid"], k1["kid"], k2["kid"]}
        assert rig.resyncs("gap") == 1
    finally:
        await stop(task)


async def test_reordered_events_end_in_the_right_state(redis, clock) -> None:
    rig = Rig(redis, clock)
    k0, k1, k2 = es256_jwk(), es256_jwk(), es256_jwk()
    rig.doc = start = snapshot(1, "e1", {k0["kid"]: "active"}, k0)
    task = await run_follower(rig)
    try:
        states = {k0["kid"]: "active", k1["kid"]: "pending", k2["kid"]: "pending"}
        rig.doc = snapshot(3, "e1", states, k0, k1, k2)
        second, third = chained(start, added(k1, 2), added(k2, 3))
        await rig.publish(third)
        await rig.publish(second)
        # v3 first: a gap, so a resync (to the v3 snapshot), then v3 is ignored. v2 is either
        # read in the same reply and ignored, or already behind the head the resync read.
        await eventually(
            lambda: rig.keyset.version == 3 and rig.ignored() >= 1, what="v3 after the resync"
        )
        await asyncio.sleep(0.3)
        assert rig.keyset.version == 3 and len(rig.keyset.view.keys) == 3
        assert rig.resyncs("gap") == 1
    finally:
        await stop(task)


async def test_forged_event_is_never_applied_and_asks_for_a_refresh(redis, clock) -> None:
    rig = Rig(redis, clock)
    k0, k1 = es256_jwk(), es256_jwk()
    rig.doc = start = snapshot(1, "e1", {k0["kid"]: "active"}, k0)
    task = await run_follower(rig)
    try:
        (event,) = chained(start, added(k1, 2))
        await rig.publish(event, key=Ed25519PrivateKey.generate())
        await eventually(lambda: rig.refresh_requests == ["rejected_event"], what="refused")
        assert rig.keyset.version == 1 and k1["kid"] not in rig.keyset.view.keys
        await rig.publish(event)  # the genuine one still applies
        await eventually(lambda: k1["kid"] in rig.keyset.view.keys, what="genuine event")
    finally:
        await stop(task)


async def test_block_stays_below_the_socket_timeout(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=1.0)
    try:
        assert effective_block_ms(client, 2_000) == 500
        assert effective_block_ms(client, 100) == 100
    finally:
        await client.aclose()
