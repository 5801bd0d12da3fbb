"""Shared fixtures: a private Redis per test session, a clean database per test."""

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import RedisServer, find_redis_server
from subscriber.clock import ManualClock


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a redis-server this test session owns (REDIS_URL only when no binary exists)."""
    if find_redis_server() is None:
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.fail("no redis-server binary found and REDIS_URL is not set")
        yield url
        return
    with RedisServer(persistence="none") as server:
        yield server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on a flushed database, closed after the test."""
    # A bare redis-py client, here and wherever a test builds one with from_url: the test's own
    # view of the one plain server it started, kept apart from subscriber.redis_conn (tested on
    # its own) so that a fault there cannot hide in the test's view too. Handed to an issuer or
    # a verifier, it takes the library's other path: a client the caller already has.
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A server of the test's own, with AOF persistence, for fault injection."""
    with RedisServer(persistence="aof") as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
