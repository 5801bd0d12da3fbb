"""Concurrent admin calls: they queue or answer 409 with a reason, never 500."""

import asyncio
import collections
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from issuer import ledger as ledger_module
from issuer.app import create_app
from subscriber.clock import ManualClock
from tests.issuer.conftest import ADMIN_TOKEN, make_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://i.test")


async def test_concurrent_rotations_in_one_process_all_succeed_in_turn(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    app = create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)
    await app.state.authority.snapshot()
    async with _client(app) as http:
        answers = await asyncio.gather(
            *(http.post("/admin/rotate", headers=ADMIN) for _ in range(64))
        )
    assert collections.Counter(a.status_code for a in answers) == {201: 64}
    versions = sorted(a.json()["version"] for a in answers)
    assert versions == list(range(versions[0], versions[0] + 64))


async def test_replicas_outpacing_the_retries_get_a_409_with_a_reason(
    redis: aioredis.Redis, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = [
        create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)
        for _ in range(2)
    ]
    for app in apps:
        await app.state.authority.snapshot()
    # One attempt only, so two replicas racing must meet a conflict they cannot retry.
    monkeypatch.setattr(ledger_module, "MAX_COMMIT_ATTEMPTS", 1)
    async with _client(apps[0]) as first, _client(apps[1]) as second:
        answers = await asyncio.gather(
            *(c.post("/admin/rotate", headers=ADMIN) for _ in range(16) for c in (first, second))
        )
    statuses = collections.Counter(a.status_code for a in answers)
    assert set(statuses) <= {201, 409} and statuses[409] > 0, statuses
    refused = next(a for a in answers if a.status_code == 409)
    assert refused.json()["error"] == "concurrent_change"
    assert refused.headers["retry-after"] == "1"
