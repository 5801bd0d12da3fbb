"""JWKS and metadata from memory: no Redis on a read, yet never behind what was committed."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from issuer.app import create_app
from keyherald.redis_server import RedisServer
from subscriber.clock import ManualClock
from subscriber.constants import JWKS_PATH, METADATA_PATH, SNAPSHOT_PATH
from subscriber.redis_keys import keys_hash, meta_hash
from subscriber.verifier import Verifier
from tests.issuer.conftest import ADMIN_TOKEN, ISSUER, make_settings
from tests.subscriber.conftest import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NO_CACHE = {"Cache-Control": "no-cache"}


def _app(redis: aioredis.Redis, clock: ManualClock) -> Any:
    return create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)


@pytest.fixture
async def own(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=5.0)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def _live(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan (so its follower) running, once memory is current."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://i.test") as c,
    ):
        await eventually(lambda: app.state.published.fresh, what="documents in memory")
        yield c


async def test_jwks_304_and_metadata_are_answered_with_redis_frozen(
    redis_server: RedisServer, own: aioredis.Redis, clock: ManualClock
) -> None:
    app = _app(own, clock)
    async with _live(app) as http:
        jwks = await http.get(JWKS_PATH)
        metadata = await http.get(METADATA_PATH)
        redis_server.pause()  # SIGSTOP: any Redis round trip would wait for the socket timeout
        try:
            async with asyncio.timeout(1.0):
                for _ in range(20):
                    again = await http.get(JWKS_PATH)
                    assert again.content == jwks.content
                    unchanged = await http.get(
                        JWKS_PATH, headers={"If-None-Match": jwks.headers["etag"]}
                    )
                    assert unchanged.status_code == 304
                    assert (await http.get(METADATA_PATH)).json() == metadata.json()
        finally:
            redis_server.resume()


async def test_neither_no_cache_nor_an_admin_change_reads_behind_memory(
    own: aioredis.Redis, clock: ManualClock
) -> None:
    app, replica = _app(own, clock), _app(own, clock)
    await app.state.authority.snapshot()
    published = app.state.published
    # A follower stopped at one point in time: memory is current and nothing else moves it,
    # so the race with a live follower cannot make this test pass by luck.
    published._following = True
    await published._refresh()
    assert published.fresh
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://i.test") as http:
        before = (await http.get(JWKS_PATH)).json()["keyherald"]["version"]
        applied = await replica.state.authority.rotate()  # another replica's commit
        assert (await http.get(JWKS_PATH)).json()["keyherald"]["version"] == before  # memory
        fresh = await http.get(JWKS_PATH, headers=NO_CACHE)
        assert fresh.json()["keyherald"]["version"] == applied.version
        kid = (await http.post("/admin/rotate", headers=ADMIN)).json()["events"][-1]["kid"]
        assert kid in {k["kid"] for k in (await http.get(JWKS_PATH)).json()["keys"]}
        revoked = await http.post(f"/admin/keys/{kid}/revoke", headers=ADMIN)
        assert revoked.status_code == 200
        assert kid not in {k["kid"] for k in (await http.get(JWKS_PATH)).json()["keys"]}


async def test_no_cache_after_a_lost_revocation_does_not_take_memory_up_again(
    own: aioredis.Redis, clock: ManualClock
) -> None:
    """Memory was rendered before a revocation; a failover then loses the revocation's
    commit, so the store's head is again the one memory holds. That store is behind what this
    issuer committed: a no-cache request must not be answered with the revoked key."""
    app = _app(own, clock)
    await app.state.authority.snapshot()
    published = app.state.published
    published._following = True  # a follower stopped before the revocation's event
    await published._refresh()
    names = [keys_hash(ISSUER), meta_hash(ISSUER)]
    before = {name: await own.dump(name) for name in names}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://i.test") as http:
        kid = (await app.state.authority.signing_key()).kid
        assert (await http.post(f"/admin/keys/{kid}/revoke", headers=ADMIN)).status_code == 200
        for name, value in before.items():
            await own.restore(name, 0, value, replace=True)
        served = (await http.get(JWKS_PATH, headers=NO_CACHE)).json()["keys"]
        assert kid not in {k["kid"] for k in served}


async def test_another_replicas_change_reaches_memory_through_the_stream(
    own: aioredis.Redis, clock: ManualClock
) -> None:
    app, replica = _app(own, clock), _app(own, clock)
    async with _live(app) as http:
        applied = await replica.state.authority.rotate()  # another process's commit

        async def from_memory() -> bool:
            doc = (await http.get(JWKS_PATH)).json()
            return app.state.published.fresh and doc["keyherald"]["version"] == applied.version

        await eventually(from_memory, what="the stream event in memory")


async def test_a_flushed_store_is_noticed_without_any_event(
    own: aioredis.Redis, clock: ManualClock
) -> None:
    app = _app(own, clock)
    async with _live(app) as http:
        old = (await http.get(JWKS_PATH)).json()["keyherald"]
        await own.flushdb()  # no event: only the idle head check can notice

        async def restored() -> bool:
            doc = (await http.get(JWKS_PATH)).json()["keyherald"]
            stored = await own.hget(meta_hash(app.state.authority.issuer), "version")
            return (
                app.state.published.fresh and doc == old and stored == str(old["version"]).encode()
            )

        # The authority writes its own signed commits back: the same history, unchanged.
        await eventually(restored, timeout_s=10.0, what="the restored store in memory")


async def test_a_verifier_bootstrapping_from_a_behind_memory_gets_the_store(
    own: aioredis.Redis, clock: ManualClock
) -> None:
    app, replica = _app(own, clock), _app(own, clock)
    await app.state.authority.snapshot()
    published = app.state.published
    published._following = True  # frozen, as above
    await published._refresh()
    applied = await replica.state.authority.rotate()
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url=ISSUER) as http,
        Verifier(
            issuer=ISSUER,
            audience="a",
            redis=own,
            http_client=http,
            clock=clock,
            registry=None,
            presence=False,
        ) as verifier,  # fmt: skip
    ):
        # Its fetches say no-cache (subscriber/jwks_client.py): the store's version, not memory's.
        assert verifier.keyset.version == applied.version


async def test_a_storm_of_no_cache_snapshot_requests_shares_a_few_store_reads(
    own: aioredis.Redis, clock: ManualClock
) -> None:
    """1,000 verifiers starting at once each fetch the snapshot with no-cache: the issuer
    answers all of them from memory after a few shared reads of the store's head, instead
    of one read (and one pooled connection: redis-py allows 100) per request."""
    app = _app(own, clock)
    async with _live(app) as http:
        await http.get(SNAPSHOT_PATH)  # the first one signs it
        before = await _hmgets(own)
        headers = {"Cache-Control": "no-cache"}
        answers = await asyncio.gather(
            *(http.get(SNAPSHOT_PATH, headers=headers) for _ in range(1_000))
        )
        assert {a.status_code for a in answers} == {200}
        assert len({a.text for a in answers}) == 1
        assert await _hmgets(own) - before <= 10


async def _hmgets(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))
