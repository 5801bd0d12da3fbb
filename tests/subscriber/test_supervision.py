"""A verifier cannot die silently: a dead follower is restarted and reported, a heartbeat that
cannot be written is a warning and shows in health(), and a degraded verifier polls the JWKS
as often as the issuer's max-age says."""

import logging
import random
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import RedisServer
from subscriber.clock import ManualClock
from subscriber.follower import StreamFollower
from subscriber.jwks_client import poll_delay_s
from subscriber.supervisor import restart_delay_s
from tests.subscriber.conftest import (
    ISSUER,
    CountingTransport,
    Issuer,
    eventually,
    issuer_app,
)


def restarts(verifier, task: str) -> float:
    return verifier.metrics.value("keyherald_task_restarts_total", task=task)


async def test_a_follower_that_dies_is_restarted_and_reported(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = {"on": False}
    follow = StreamFollower._follow

    async def crashing_follow(self: StreamFollower) -> None:
        if broken["on"]:
            # What an incompatible dependency does: not a Redis error, not handled inside.
            raise TypeError("wait_exponential_jitter() got an unexpected keyword 'multiplier'")
        await follow(self)

    monkeypatch.setattr(StreamFollower, "_follow", crashing_follow)
    async with issuer.verifier() as verifier:
        assert verifier.health().state == "live"
        broken["on"] = True
        # Force a new session: the running XREAD ends on the next reply.
        await issuer.authority.rotate()
        await eventually(lambda: verifier.health().state == "failed", what="failed")
        health = verifier.health()
        assert health.failure == "follower died: TypeError"
        assert verifier.heartbeat_record().state == "failed"
        await eventually(lambda: restarts(verifier, "follower") >= 2, what="restarted twice")
        assert verifier.health().restarts >= 2
        assert verifier.metrics.value("keyherald_state", issuer=ISSUER, state="failed") == 1
        broken["on"] = False
        await eventually(lambda: verifier.health().state == "live", timeout_s=10, what="live")
        assert verifier.health().failure is None
        applied = await issuer.authority.rotate()
        kid = applied.events[-1].kid
        await eventually(lambda: kid in verifier.keyset.view.keys, what="following again")


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    rng = random.Random(7)
    ceilings = [max(restart_delay_s(n, rng) for _ in range(50)) for n in (1, 2, 3, 20)]
    assert ceilings[0] <= 0.1 < ceilings[1] <= 0.2 < ceilings[2] <= 0.4
    assert 15 <= ceilings[3] <= 30


@pytest.fixture
async def replica(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A read-only replica of the session's Redis."""
    with RedisServer(persistence="none") as server:
        client = aioredis.Redis.from_url(server.url)
        host, port = redis_url.split("//", 1)[1].split("/", 1)[0].split(":")
        await client.replicaof(host, int(port))
        await eventually(
            lambda: _synced(client), timeout_s=10, what="replica in sync with its primary"
        )
        yield client
        await client.aclose()


async def _synced(client: aioredis.Redis) -> bool:
    info = await client.info("replication")
    return info.get("master_link_status") == "up"


async def test_heartbeat_on_a_read_only_replica_warns_and_shows_in_health(
    issuer: Issuer, replica: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="subscriber.presence"):
        async with issuer.verifier(redis=replica) as verifier:
            await eventually(lambda: verifier.health().heartbeat_error is not None, what="error")
            assert "ReadOnlyError" in verifier.health().heartbeat_error
            assert verifier.metrics.value("keyherald_heartbeat_failures_total") >= 1
            # Reading from a replica is fine: the verifier follows the stream.
            assert verifier.health().state == "live"
            applied = await issuer.authority.rotate()
            kid = applied.events[-1].kid
            await eventually(lambda: kid in verifier.keyset.view.keys, what="event via replica")
    warnings = [r for r in caplog.records if "heartbeat not written" in r.getMessage()]
    assert len(warnings) == 1, "one warning per outage, not one per beat"
    assert "read-only replica" in warnings[0].getMessage()


def test_default_poll_interval_honours_a_short_max_age() -> None:
    """The issuer promises lead >= max-age + skew; a floor above max-age broke that."""
    rng = random.Random(3)
    assert max(poll_delay_s(2.0, rng) for _ in range(100)) <= 2.0


async def test_a_degraded_verifier_learns_a_key_within_the_jwks_max_age(
    redis: aioredis.Redis, clock: ManualClock, redis_server: RedisServer
) -> None:
    app = issuer_app(redis, clock, jwks_max_age_s=1)
    transport = CountingTransport(httpx.ASGITransport(app=app))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        harness = Issuer(app=app, clock=clock, redis=redis, transport=transport, http=http)
        await harness.authority.snapshot()
        own = aioredis.Redis.from_url(redis_server.url, socket_timeout=1, socket_connect_timeout=1)
        # Default poll bounds: the verifier follows the issuer's advertised max-age.
        async with harness.verifier(redis=own) as verifier:
            redis_server.kill()
            await eventually(lambda: verifier.health().state == "degraded", what="degraded")
            applied = await harness.authority.rotate()
            kid = applied.events[-1].kid
            # Before: the poll floor was 5 s whatever the max-age said.
            await eventually(lambda: kid in verifier.keyset.view.keys, timeout_s=3, what="key")
        await own.aclose()
