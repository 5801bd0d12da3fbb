"""The confirmed activation gate: a key signs only once every live verifier holds it."""

import logging

import httpx
import pytest
import redis.asyncio as aioredis

from issuer.app import create_app
from issuer.authority import Authority
from issuer.kek import Kek
from issuer.policy import RotationPolicy
from issuer.readiness import ActivationGate
from issuer.records import ACTIVE, PENDING, RETIRING
from subscriber.clock import ManualClock

from .conftest import ADMIN_TOKEN, ISSUER, heartbeat, make_settings

POLICY = RotationPolicy(
    rotation_period_s=1_000.0,
    lead_s=100.0,
    retire_grace_s=200.0,
    max_token_ttl_s=60.0,
    jwks_max_age_s=30.0,
    clock_skew_s=5.0,
)


async def _beat(redis: aioredis.Redis, clock: ManualClock, instance: str, kids: set[str]) -> None:
    await heartbeat(redis, clock, instance, dict.fromkeys(kids, clock()))


async def _rotated(
    redis: aioredis.Redis, clock: ManualClock, gate: ActivationGate
) -> tuple[Authority, str, str]:
    authority = Authority(
        redis=redis, issuer=ISSUER, policy=POLICY, kek=Kek(bytes(32)), clock=clock, gate=gate
    )
    await authority.bootstrap()
    (old,) = [k.kid for k in await authority.keys() if k.state == ACTIVE]
    new = (await authority.rotate()).events[0].kid
    return authority, old, new


async def _states(authority: Authority) -> dict[str, str]:
    return {k.kid: k.state for k in await authority.keys()}


async def test_activation_waits_for_the_lagging_verifier(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    gate = ActivationGate(mode="confirmed", max_wait_s=500.0)
    authority, old, new = await _rotated(redis, clock, gate)
    await _beat(redis, clock, "a", {old, new})
    await _beat(redis, clock, "b", {old})

    clock.advance(POLICY.lead_s)
    assert await authority.tick() == []
    assert (await _states(authority))[new] == PENDING
    assert (await authority.readiness(new)).lagging == ("b",)

    clock.advance(50.0)  # still lagging, still held; nothing else is due
    assert await authority.tick() == []

    await _beat(redis, clock, "b", {old, new})
    applied = await authority.tick()
    assert [e.type for a in applied for e in a.events] == ["key-activated"]
    keys = {k.kid: k for k in await authority.keys()}
    assert keys[new].state == ACTIVE and keys[old].state == RETIRING
    # Activated 50 s late, the old key still gets its whole grace from the real switch.
    assert keys[old].retire_at == clock() + POLICY.retire_grace_s


async def test_time_gate_ignores_heartbeats(redis: aioredis.Redis, clock: ManualClock) -> None:
    authority, old, new = await _rotated(redis, clock, ActivationGate(mode="time"))
    await _beat(redis, clock, "b", {old})
    clock.advance(POLICY.lead_s)
    await authority.tick()
    assert (await _states(authority))[new] == ACTIVE


@pytest.mark.parametrize(("on_timeout", "expected"), [("activate", ACTIVE), ("wait", PENDING)])
async def test_max_wait(
    redis: aioredis.Redis,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    on_timeout: str,
    expected: str,
) -> None:
    gate = ActivationGate(mode="confirmed", max_wait_s=60.0, on_timeout=on_timeout)
    authority, old, new = await _rotated(redis, clock, gate)
    await _beat(redis, clock, "b", {old})
    clock.advance(POLICY.lead_s + 59.0)
    await authority.tick()
    assert (await _states(authority))[new] == PENDING
    clock.advance(1.0)
    with caplog.at_level(logging.INFO, logger="issuer.readiness"):
        await authority.tick()
        await authority.tick()
    assert (await _states(authority))[new] == expected
    level = logging.WARNING if on_timeout == "activate" else logging.ERROR
    # Said once, naming the lagging verifier, not once per scheduler tick.
    loud = [r for r in caplog.records if r.levelno == level and r.name == "issuer.readiness"]
    assert len(loud) == 1 and "b" in loud[0].getMessage()


async def test_a_verifier_whose_heartbeat_expired_no_longer_holds_back(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    authority, old, new = await _rotated(redis, clock, ActivationGate(mode="confirmed"))
    await heartbeat(redis, clock, "gone", {old: clock()}, ttl_s=POLICY.lead_s / 2)
    clock.advance(POLICY.lead_s)
    await authority.tick()
    assert (await _states(authority))[new] == ACTIVE


async def test_readiness_endpoint(redis: aioredis.Redis, clock: ManualClock) -> None:
    app = create_app(
        settings=make_settings(activation_gate="confirmed"),
        redis=redis,
        clock=clock,
        run_scheduler=False,
    )
    authority: Authority = app.state.authority
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        await authority.bootstrap()
        new = (await authority.rotate()).events[0].kid
        clock.advance(authority.policy.lead_s)
        await _beat(redis, clock, "a", {new})
        await _beat(redis, clock, "b", set())
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        body = (await http.get(f"/admin/keys/{new}/readiness", headers=headers)).json()
        assert body["ready"] is False and body["lagging"] == ["b"]
        assert body["gate"] == "confirmed" and body["activation_held"] is True
        assert [v["holds"] for v in body["verifiers"]] == [True, False]
        assert (await http.get(f"/admin/keys/{new}/readiness")).status_code == 401
        missing = await http.get("/admin/keys/no-such-kid/readiness", headers=headers)
        assert missing.status_code == 404
