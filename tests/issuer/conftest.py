"""Issuer fixtures: the real app and authority on the test Redis, driven by a manual clock."""

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from issuer.app import create_app
from issuer.authority import Authority
from issuer.kek import Kek
from issuer.settings import IssuerSettings
from subscriber.clock import Clock, ManualClock
from subscriber.presence import HeartbeatRecord, Presence

ISSUER = "https://issuer.test"
ADMIN_TOKEN = "test-admin-token-0123456789"
KEK_BYTES = bytes(range(32))
KEK_B64 = base64.b64encode(KEK_BYTES).decode()


def make_settings(**overrides: object) -> IssuerSettings:
    values: dict[str, object] = {"issuer": ISSUER, "kek": KEK_B64, "admin_token": ADMIN_TOKEN}
    values.update(overrides)
    return IssuerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings() -> IssuerSettings:
    return make_settings()


@pytest.fixture
def app(settings: IssuerSettings, redis: aioredis.Redis, clock: ManualClock) -> FastAPI:
    return create_app(settings=settings, redis=redis, clock=clock, run_scheduler=False)


@pytest.fixture
def authority(app: FastAPI) -> Authority:
    result: Authority = app.state.authority
    return result


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        yield client


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def kek() -> Kek:
    return Kek(KEK_BYTES)


async def heartbeat(
    redis: aioredis.Redis,
    clock: Clock,
    instance: str,
    kids: dict[str, float],
    *,
    ttl_s: float = 10_000.0,
    issuer: str = ISSUER,
) -> None:
    """Write the heartbeat a verifier instance holding ``kids`` (kid -> since) would write."""
    presence = Presence(redis, issuer, instance, clock, ttl_s=ttl_s)
    await presence.beat(
        HeartbeatRecord(
            instance_id=instance,
            service="api",
            host="h",
            pid=1,
            state="live",
            epoch=None,
            version=0,
            kids=kids,
            lag_ms=0.0,
            last_event_ts=None,
            updated_at=clock(),
        )  # fmt: skip
    )
