"""The issuer as a real server: uvicorn on 127.0.0.1, scheduler running, independent clients."""

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from issuer.app import create_app
from issuer.authority import Authority
from keyherald.redis_server import RedisServer, free_port
from subscriber.clock import ManualClock
from tests.issuer.conftest import ADMIN_TOKEN, make_settings


@pytest.fixture
async def served(redis: aioredis.Redis, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The issuer app under uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    alg = getattr(request, "param", "ES256")
    app = create_app(settings=make_settings(issuer=base, algorithm=alg), redis=redis)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                            http="h11", ws="none", log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # startup failed: surface why
                await asyncio.sleep(0.01)
        yield base
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("served", ["RS256", "ES256", "EdDSA"], indirect=True)
async def test_token_verifies_with_pyjwt_jwks_client(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        metadata = (await http.get("/.well-known/openid-configuration")).json()
        response = await http.post(
            "/admin/tokens",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"sub": "user-1", "aud": "api", "ttl_s": 300, "claims": {"role": "reader"}},
        )
    assert response.status_code == 200
    token = response.json()["token"]
    # PyJWKClient fetches with urllib (blocking): keep it off the loop the server runs on.
    client = jwt.PyJWKClient(metadata["jwks_uri"], cache_keys=False)
    signing_key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
    claims = jwt.decode(
        token, signing_key.key, algorithms=metadata["id_token_signing_alg_values_supported"],
        audience="api", issuer=served,
    )  # fmt: skip
    assert claims["sub"] == "user-1" and claims["role"] == "reader"


async def test_lifespan_checks_redis_bootstraps_and_runs_the_scheduler(
    redis: aioredis.Redis, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tick_interval_s=0.01, lease_ttl_s=1)
    app: FastAPI = create_app(settings=settings, redis=redis, clock=clock)
    authority: Authority = app.state.authority
    async with app.router.lifespan_context(app):
        assert "REDIS DOES NOT PERSIST DATA" in caplog.text
        assert [k.state for k in await authority.keys()] == ["active"]
        clock.advance(settings.rotation_period_s - settings.lead_s)  # the next key is due
        async with asyncio.timeout(5):
            while len(await authority.keys()) < 2:
                await asyncio.sleep(0.01)
        assert [k.state for k in await authority.keys()] == ["active", "pending"]
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_redis_outage_serves_the_last_jwks_and_503_elsewhere(
    redis_server: RedisServer, clock: ManualClock
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    app = create_app(settings=make_settings(), redis=client, clock=clock, run_scheduler=False)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://issuer.test"
        ) as http:
            jwks = await http.get("/.well-known/jwks.json")
            metadata = await http.get("/.well-known/openid-configuration")
            redis_server.kill()
            stale = await http.get("/.well-known/jwks.json")
            assert stale.status_code == 200 and stale.content == jwks.content
            assert stale.headers["etag"] == jwks.headers["etag"]
            assert (await http.get("/.well-known/openid-configuration")).json() == metadata.json()
            down = await http.post("/admin/rotate", headers=headers)
            assert down.status_code == 503 and down.json()["error"] == "store_unavailable"
            assert down.headers["retry-after"] == "1"
            redis_server.start()
            assert (await http.post("/admin/rotate", headers=headers)).status_code == 201
    finally:
        await client.aclose()


async def test_stalled_redis_gives_a_stale_jwks_not_a_hang(
    redis_server: RedisServer, clock: ManualClock
) -> None:
    settings = make_settings(redis_url=redis_server.url, redis_timeout_s=0.3)
    app = create_app(settings=settings, clock=clock, run_scheduler=False)  # its own client
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://issuer.test"
        ) as http,
    ):
        jwks = await http.get("/.well-known/jwks.json")
        redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            async with asyncio.timeout(10):  # without a socket timeout this would hang
                stale = await http.get("/.well-known/jwks.json")
                down = await http.get("/admin/keys", headers=headers)
        finally:
            redis_server.resume()
        assert stale.status_code == 200 and stale.content == jwks.content
        assert down.status_code == 503
        assert (await http.get("/admin/keys", headers=headers)).status_code == 200
