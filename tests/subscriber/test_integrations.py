"""FastAPI dependency, presence heartbeats, metrics and health, against the real issuer."""

import asyncio
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from subscriber.errors import FetchError, InvalidKey
from subscriber.fastapi import bearer_claims
from subscriber.presence import live_verifiers
from subscriber.verifier import Verifier
from tests.subscriber.conftest import AUDIENCE, ISSUER, Issuer, eventually, with_kid


async def test_fastapi_dependency_answers_401_with_a_bearer_challenge(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        app = FastAPI()
        require_claims = bearer_claims(lambda request: request.app.state.verifier)
        app.state.verifier = verifier

        @app.get("/orders")
        async def orders(claims: Annotated[dict[str, Any], Depends(require_claims)]) -> Any:
            return {"sub": claims["sub"]}

        token = await issuer.token()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as api:
            ok = await api.get("/orders", headers={"Authorization": f"Bearer {token}"})
            missing = await api.get("/orders")
            bad = await api.get(
                "/orders", headers={"Authorization": f"Bearer {with_kid(token, 'nope')}"}
            )
            wrong_scheme = await api.get("/orders", headers={"Authorization": f"Basic {token}"})
    assert (ok.status_code, ok.json()) == (200, {"sub": "u1"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "unknown_kid" not in bad.text  # the reason goes to metrics, not to the client
    assert wrong_scheme.status_code == 401


async def test_presence_heartbeat_tracks_the_key_set(issuer: Issuer) -> None:
    async with issuer.verifier(service="orders-api") as verifier:
        await eventually(lambda: verifier.keyset.version > 0)

        async def record() -> dict[str, Any] | None:
            found = await live_verifiers(issuer.redis, ISSUER, issuer.clock())
            mine = [r for r in found if r["instance_id"] == verifier.instance_id]
            return mine[0] if mine else None

        async def current() -> bool:
            r = await record()
            return r is not None and r["version"] == verifier.keyset.version

        await eventually(current, what="first heartbeat")
        applied = await issuer.authority.rotate()
        await eventually(current, what="heartbeat after an event")
        r = await record()
        assert r is not None
        assert r["version"] == applied.version and r["state"] == "live"
        assert set(r["kids"]) == set(verifier.keyset.view.keys)
        assert r["service"] == "orders-api" and r["epoch"] == verifier.keyset.epoch
        assert {"host", "pid", "lag_ms", "last_event_ts", "updated_at"} <= r.keys()
    assert await record() is None  # a clean shutdown removes the record


async def test_expired_heartbeats_are_pruned(issuer: Issuer) -> None:
    async def listed() -> bool:
        return len(await live_verifiers(issuer.redis, ISSUER, issuer.clock())) == 1

    async with issuer.verifier(heartbeat_ttl_s=20.0):
        await eventually(listed, what="heartbeat")
        issuer.clock.advance(21.0)
        assert await live_verifiers(issuer.redis, ISSUER, issuer.clock()) == []


async def test_metrics_count_outcomes_and_health_reports_the_key_set(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        token = await issuer.token()
        verifier.verify(token)
        with pytest.raises(Exception):  # noqa: B017 - any refusal
            verifier.verify(with_kid(token, "nope"))
        metrics = verifier.metrics
        assert metrics.value("keyherald_verifications_total", outcome="valid", reason="ok") == 1
        assert (
            metrics.value("keyherald_verifications_total", outcome="invalid", reason="unknown_kid")
            == 1
        )
        assert metrics.value("keyherald_state", issuer=ISSUER, state="live") == 1
        assert metrics.value("keyherald_jwks_fetches_total", trigger="resync", result="ok") == 1
        health = verifier.health()
        kid = (await issuer.authority.signing_key()).kid
        assert health.kids == {kid: "active"} and health.state == "live"
        assert health.epoch == verifier.keyset.epoch and health.confirmed_at is not None


async def test_configuration_is_checked_in_the_constructor(issuer: Issuer) -> None:
    with pytest.raises(ValueError, match="exactly one of redis_url and redis"):
        Verifier(issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match='stale_policy must be .* "sometimes"'):
        Verifier(issuer=ISSUER, audience=AUDIENCE, redis=issuer.redis, stale_policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown_kid_cooldown_s must be greater than 0"):
        Verifier(issuer=ISSUER, audience=AUDIENCE, redis=issuer.redis, unknown_kid_cooldown_s=0)
    with pytest.raises(InvalidKey):
        Verifier(issuer=ISSUER, audience=AUDIENCE, redis=issuer.redis, announcement_keys=[{}])


async def test_start_fails_when_the_issuer_is_unreachable(issuer: Issuer) -> None:
    issuer.transport.down = True
    with pytest.raises(FetchError):
        await issuer.verifier(start_timeout_s=0).start()


async def test_start_retries_an_issuer_that_comes_back(issuer: Issuer) -> None:
    issuer.transport.down = True
    verifier = issuer.verifier(start_timeout_s=10)
    starting = asyncio.create_task(verifier.start())
    await asyncio.sleep(0.5)
    assert not starting.done()
    issuer.transport.down = False
    await asyncio.wait_for(starting, 10)
    try:
        assert verifier.verify(await issuer.token())
    finally:
        await verifier.aclose()


async def test_pinned_announcement_key_and_snapshot_url_skip_metadata(issuer: Issuer) -> None:
    pinned = await issuer.authority.announcement_jwks()
    url = f"{ISSUER}/.well-known/keyherald-snapshot.jwt"
    async with issuer.verifier(announcement_keys=pinned, snapshot_url=url) as verifier:
        assert verifier.verify(await issuer.token())
        applied = await issuer.authority.rotate()
        await eventually(lambda: verifier.keyset.version == applied.version)
    assert "/.well-known/openid-configuration" not in issuer.transport.paths
