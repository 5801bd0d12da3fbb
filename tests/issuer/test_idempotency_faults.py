"""Lost replies: the change is made, its answer never arrives, the client retries under the same
``Idempotency-Key`` and gets the committed result; the key set changes once. The issuer is the
real app on uvicorn (127.0.0.1), or on the test Redis through a proxy that loses its reply."""

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI

from issuer.app import create_app
from issuer.store import COMMIT_SCRIPT
from keyherald.observe import IssuerClient
from keyherald.redis_server import RedisServer
from subscriber.clock import ManualClock
from tests.issuer.conftest import ADMIN_TOKEN, ISSUER, make_settings
from tests.issuer.helpers import stream_events
from tests.issuer.proxy import ReplyDroppingProxy
from tests.relay.servers import Server

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: redis-py 6.0 and later send a command again after a connection error by default; 5.x (the
#: floor is 5.3) only after the errors ``retry_on_error`` names, so a lost reply is an error.
RESENDS = int(redis.__version__.split(".")[0]) >= 6
#: How redis-py sends the commit script once Redis has it (RESP).
_EVALSHA_COMMIT = b"EVALSHA\r\n$40\r\n" + hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest().encode()
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[Server]:
    await app.state.authority.snapshot()
    async with Server(app) as server:
        yield server


@contextlib.asynccontextmanager
async def behind_a_lossy_redis(
    redis_url: str, clock: ManualClock
) -> AsyncIterator[tuple[FastAPI, ReplyDroppingProxy, httpx.AsyncClient]]:
    """The issuer app on the test Redis through a proxy that, once armed, loses Redis's reply
    to the next commit script; the script is loaded, so the next EVALSHA runs it."""
    port = urlsplit(redis_url).port
    assert port is not None
    async with ReplyDroppingProxy(port, _EVALSHA_COMMIT, armed=False) as proxy:
        settings = make_settings(redis_url=proxy.url)
        app = create_app(settings=settings, clock=clock, run_scheduler=False)
        try:
            await app.state.authority.bootstrap()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
                yield app, proxy, http
        finally:
            await app.state.authority.redis.aclose()


async def test_a_rotation_whose_answer_was_lost_is_replayed_to_the_retry(
    served: Server, app: FastAPI, redis: aioredis.Redis
) -> None:
    authority = app.state.authority
    headers = {**ADMIN, "Idempotency-Key": "nightly-rotation"}
    async with ReplyDroppingProxy(served.port, b"POST /admin/rotate") as proxy:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}") as http:
            with pytest.raises(httpx.TransportError):
                await http.post("/admin/rotate", headers=headers)
            assert proxy.dropped.is_set()
            retried = await http.post("/admin/rotate", headers=headers)
    assert retried.status_code == 201 and retried.headers["idempotent-replayed"] == "true"
    kids = [k.kid for k in await authority.keys()]
    assert len(kids) == 2 and retried.json()["events"][0]["kid"] == kids[-1]
    assert [e.type for e in await stream_events(redis, authority)] == [
        "key-added",
        "key-activated",
        "key-added",
    ]


async def test_a_commit_whose_redis_reply_was_lost_is_answered_once(
    redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> None:
    """redis-py sends the commit script again after a lost reply; the script finds its own
    record and writes nothing, so the request answers with the change it made."""
    async with behind_a_lossy_redis(redis_url, clock) as (app, proxy, http):
        proxy.arm()
        headers = {**ADMIN, "Idempotency-Key": "k"}
        first = await http.post("/admin/rotate", headers=headers)
        assert proxy.dropped.is_set()
        again = await http.post("/admin/rotate", headers=headers)
        keys = await app.state.authority.keys()
    if RESENDS:
        # The request's own script, sent again, found the record it had written: a replay.
        assert first.status_code == 201 and first.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
    else:
        # The lost reply is a 503; the retry under the key gets the change that was made.
        assert first.status_code == 503 and first.json()["error"] == "store_unavailable"
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert len(keys) == 2


@pytest.mark.skipif(not RESENDS, reason="redis-py 5.x does not send the script again")
async def test_a_commit_whose_redis_reply_was_lost_is_answered_without_a_key(
    redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> None:
    """Without an Idempotency-Key too: the script sent again finds the version moved, and the
    store at exactly the state the first run wrote (its MAC) means the change landed."""
    async with behind_a_lossy_redis(redis_url, clock) as (app, proxy, http):
        authority = app.state.authority
        proxy.arm()
        rotated = await http.post("/admin/rotate", headers=ADMIN)
        assert proxy.dropped.is_set()
        kid = rotated.json()["events"][0]["kid"] if rotated.status_code == 201 else None
        proxy.arm()
        revoked = await http.post(f"/admin/keys/{kid}/revoke", headers=ADMIN)
        keys = {k.kid: k.state for k in await authority.keys()}
        events = await stream_events(redis, authority)
    assert rotated.status_code == 201, rotated.text
    assert revoked.status_code == 200, revoked.text
    assert len(keys) == 2 and keys[kid] == "revoked"
    assert [e.type for e in events] == [
        "key-added",
        "key-activated",
        "key-added",
        "key-retired",
    ]


async def test_the_status_client_revokes_once_across_a_lost_answer(
    served: Server, app: FastAPI, redis: aioredis.Redis
) -> None:
    authority = app.state.authority
    kid = (await authority.rotate()).events[0].kid
    async with ReplyDroppingProxy(served.port, b"/revoke") as proxy:
        async with IssuerClient(f"http://127.0.0.1:{proxy.port}", admin_token=ADMIN_TOKEN) as c:
            answer = await c.revoke(kid)
    assert proxy.dropped.is_set()
    assert [e["kid"] for e in answer["events"]] == [kid]
    ended = [e for e in await stream_events(redis, authority) if e.type == "key-retired"]
    assert [(e.kid, e.data["reason"]) for e in ended] == [(kid, "revoked")]


async def test_keyed_rotations_are_each_made_once_across_a_redis_crash(
    redis_server: RedisServer, clock: ManualClock
) -> None:
    """Kill -9 Redis (AOF, fsync always) under a burst of keyed rotations from 4 clients, each
    stopping at its first failure, right after a commit whose reply it kept from the issuer;
    after the restart a fresh issuer gets every request again under its key. An answered
    rotation is answered again byte for byte, the one made but unanswered is replayed, and one
    never made is made now: one key per request key."""

    def issuer(url: str) -> FastAPI:
        settings = make_settings(redis_url=url)
        return create_app(settings=settings, clock=clock, run_scheduler=False)

    sent: list[str] = []
    answered: dict[str, bytes] = {}

    async def burst(http: httpx.AsyncClient, client: int) -> None:
        for i in range(40):
            key = f"burst-{client}-{i}"
            sent.append(key)
            answer = await http.post("/admin/rotate", headers={**ADMIN, "Idempotency-Key": key})
            if answer.status_code != 201:
                assert answer.status_code == 503, answer.text
                return
            answered[key] = answer.content

    proxy = ReplyDroppingProxy(redis_server.port, _EVALSHA_COMMIT, armed=False)
    async with proxy, _client(issuer(proxy.url)) as http:
        await http.get("/admin/keys", headers=ADMIN)  # bootstraps, and loads the script
        tasks = [asyncio.create_task(burst(http, n)) for n in range(4)]
        async with asyncio.timeout(10):
            while len(answered) < 12:
                await asyncio.sleep(0)
            proxy.arm()
            await proxy.dropped.wait()
        redis_server.kill()
        await asyncio.gather(*tasks)
        await http.app.state.authority.redis.aclose()  # type: ignore[attr-defined]

    redis_server.start()
    async with _client(issuer(redis_server.url)) as http:
        again = {
            key: await http.post("/admin/rotate", headers={**ADMIN, "Idempotency-Key": key})
            for key in sent
        }
        keys = (await http.get("/admin/keys", headers=ADMIN)).json()
        await http.app.state.authority.redis.aclose()  # type: ignore[attr-defined]
    assert all(again[key].content == body for key, body in answered.items())
    unanswered = [key for key in sent if key not in answered]
    replayed = [key for key in unanswered if again[key].headers.get("idempotent-replayed")]
    assert len(replayed) == 1  # the commit whose reply was kept
    kids = {key: answer.json()["events"][0]["kid"] for key, answer in again.items()}
    assert len(set(kids.values())) == len(sent)
    assert sorted(k["kid"] for k in keys[1:]) == sorted(kids.values())


def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url=ISSUER)
    client.app = app  # type: ignore[attr-defined]
    return client
