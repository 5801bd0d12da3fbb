"""Redis faults: restart, flush, an unreachable Redis with polling, each ending correct."""

import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import RedisServer
from subscriber.clock import ManualClock
from subscriber.redis_keys import event_stream
from tests.subscriber.conftest import ISSUER, Issuer, eventually, running_issuer


@pytest.fixture
async def own_redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(
        redis_server.url, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    yield client
    await client.aclose()


def resyncs(verifier, cause: str) -> float:
    return verifier.metrics.value("keyherald_resyncs_total", cause=cause)


async def test_redis_restart_ends_in_a_resync(
    redis_server: RedisServer, own_redis: aioredis.Redis, clock: ManualClock
) -> None:
    async with running_issuer(own_redis, clock) as issuer:
        verifier = await issuer.verifier(block_ms=200).__aenter__()
        token = await issuer.token()
        redis_server.kill()
        await eventually(lambda: verifier.health().state == "degraded", what="degraded")
        assert verifier.verify(token)  # serving from the cache
        redis_server.restart()
        await eventually(lambda: verifier.health().state == "live", what="live again")
        assert resyncs(verifier, "connect") >= 1
        # The issuer's idle pooled connections died with the server (the issuer's concern).
        await own_redis.connection_pool.disconnect(inuse_connections=False)
        applied = await issuer.authority.rotate()
        kid = applied.events[-1].kid
        await eventually(lambda: kid in verifier.keyset.view.keys, what="event after restart")
        assert verifier.keyset.version == applied.version


async def test_flushed_redis_is_restored_and_its_keys_keep_verifying(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        old_token = await issuer.token()
        epoch, version = verifier.keyset.epoch, verifier.keyset.version
        await issuer.redis.flushdb()
        await eventually(lambda: resyncs(verifier, "stream_lost") >= 1, what="flush noticed")
        # The running issuer wrote its own signed commits back: the same history, unchanged.
        await eventually(lambda: issuer.redis.xlen(event_stream(ISSUER)), what="stream back")
        assert (verifier.keyset.epoch, verifier.keyset.version) == (epoch, version)
        assert verifier.verify(old_token)  # no valid token dies with the store
        assert verifier.verify(await issuer.token())
        applied = await issuer.authority.rotate()
        kid = applied.events[-1].kid
        await eventually(lambda: kid in verifier.keyset.view.keys, what="new-epoch event")
        assert not verifier.metrics.value("keyherald_events_rejected_total", reason="forged_event")


async def test_unreachable_redis_keeps_verifying_and_polls_a_rotation(
    issuer: Issuer, redis_server: RedisServer, own_redis: aioredis.Redis
) -> None:
    # The verifier's Redis is cut off from it while the issuer carries on rotating.
    token = await issuer.token()
    async with issuer.verifier(
        redis=own_redis, min_poll_interval_s=0.05, max_poll_interval_s=0.1
    ) as verifier:
        assert verifier.health().state == "live"
        redis_server.kill()
        await eventually(lambda: verifier.health().state == "degraded", what="degraded")
        assert verifier.verify(token)
        await issuer.authority.rotate()
        await issuer.advance(issuer.settings.lead_s)
        new_token = await issuer.token()
        new_kid = (await issuer.authority.signing_key()).kid
        await eventually(lambda: new_kid in verifier.keyset.view.keys, what="polled rotation")
        assert verifier.verify(new_token)
        assert verifier.health().state == "degraded"
        assert verifier.metrics.value("keyherald_jwks_fetches_total", trigger="poll", result="ok")


async def test_trimmed_stream_ends_in_a_resync_and_following_resumes(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        view = verifier.keyset.view
        await issuer.redis.xtrim(event_stream(ISSUER), maxlen=0, approximate=False)
        await eventually(lambda: resyncs(verifier, "stream_lost") >= 1, what="trim noticed")
        assert verifier.keyset.view.keys == view.keys
        assert verifier.keyset.version == view.version
        applied = await issuer.authority.rotate()
        await eventually(lambda: verifier.keyset.version == applied.version, what="next event")


async def test_a_redis_stalled_past_the_socket_timeout_is_followed_again_at_once_each_time(
    redis_server: RedisServer, own_redis: aioredis.Redis, clock: ManualClock, caplog
) -> None:
    # The verifier's reads time out after 0.2 s; each stall lasts three failed reads of the
    # stream watch, as a failover or a long pause would. A watch whose backoff kept doubling
    # across stalls was 1.6 s behind after the second and 5 s after the third; its followers
    # meanwhile re-fetched the snapshot as fast as the issuer answered.
    watch = "subscriber.stream_watch"
    caplog.set_level(logging.DEBUG, watch)

    def logged(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == watch and text in r.message]

    stream_redis = aioredis.Redis.from_url(
        redis_server.url, socket_timeout=0.2, socket_connect_timeout=0.2
    )
    async with running_issuer(own_redis, clock) as issuer:
        async with issuer.verifier(redis=stream_redis, block_ms=100, presence=False) as verifier:
            for _ in range(3):
                failed, recovered = len(logged("read failed")), len(logged("reading again"))
                fetches = issuer.transport.snapshot_fetches()
                redis_server.pause()
                try:
                    await eventually(
                        lambda n=failed: len(logged("read failed")) >= n + 3,
                        what="three failed reads",
                    )
                finally:
                    redis_server.resume()
                # The retry is a warning the first time, and only then.
                levels = [r.levelno for r in logged("read failed")[failed:]]
                assert levels == [logging.WARNING] + [logging.DEBUG] * (len(levels) - 1)
                await eventually(
                    lambda n=recovered: len(logged("reading again")) > n,
                    timeout_s=1.0,
                    what="the watch reading again",
                )
                await eventually(lambda: verifier.health().state == "live", what="live again")
                assert issuer.transport.snapshot_fetches() - fetches <= 3
                connects = resyncs(verifier, "connect")
                kid = (await issuer.authority.rotate()).events[-1].kid
                await eventually(lambda k=kid: k in verifier.keyset.view.keys, timeout_s=1.0)
                assert resyncs(verifier, "connect") == connects  # read from the stream
    await stream_redis.aclose()
