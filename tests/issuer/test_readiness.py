"""Readiness and the activation gate: pure decisions, and the heartbeat records they read."""

import pytest
import redis.asyncio as aioredis

from issuer.readiness import (
    GATE_CONFIRMED,
    GATE_TIME,
    ON_TIMEOUT_ACTIVATE,
    ON_TIMEOUT_WAIT,
    gate_decision,
    read_readiness,
    readiness,
)

from .conftest import heartbeat

ISSUER = "https://id.example.com"


def _record(instance: str, kids: dict[str, float]) -> dict[str, object]:
    return {"instance_id": instance, "service": "api", "state": "live", "version": 3, "kids": kids}


def test_ready_only_when_every_live_verifier_holds_the_key() -> None:
    both = readiness("k2", [_record("a", {"k1": 1.0, "k2": 5.0}), _record("b", {"k2": 6.0})])
    assert both.ready and both.lagging == ()
    one = readiness("k2", [_record("a", {"k1": 1.0, "k2": 5.0}), _record("b", {"k1": 1.0})])
    assert not one.ready and one.lagging == ("b",)
    assert {v.instance_id: v.since for v in one.verifiers} == {"a": 5.0, "b": None}


@pytest.mark.parametrize(
    ("gate", "is_ready", "now", "on_timeout", "expected"),
    [
        (GATE_TIME, False, 100.0, ON_TIMEOUT_WAIT, (True, False, False)),
        (GATE_CONFIRMED, True, 100.0, ON_TIMEOUT_WAIT, (True, False, False)),
        (GATE_CONFIRMED, False, 159.0, ON_TIMEOUT_ACTIVATE, (False, False, False)),
        (GATE_CONFIRMED, False, 160.0, ON_TIMEOUT_ACTIVATE, (True, True, False)),
        (GATE_CONFIRMED, False, 160.0, ON_TIMEOUT_WAIT, (False, False, True)),
    ],
)
def test_gate_decision(
    gate: str, is_ready: bool, now: float, on_timeout: str, expected: tuple[bool, bool, bool]
) -> None:
    kids = {"k2": 1.0} if is_ready else {}
    ready = readiness("k2", [_record("a", kids)])
    decision = gate_decision(
        gate, ready, due_at=100.0, now=now, max_wait_s=60.0, on_timeout=on_timeout
    )
    assert (decision.activate, decision.forced, decision.overdue) == expected


async def test_readiness_reads_live_heartbeats_and_drops_expired(redis: aioredis.Redis) -> None:
    now = 1_000.0
    for instance, kids, ttl in (("a", {"k2": 990.0}, 30.0), ("b", {}, 30.0), ("c", {}, 5.0)):
        await heartbeat(redis, lambda: now, instance, kids, ttl_s=ttl, issuer=ISSUER)
    assert (await read_readiness(redis, ISSUER, "k2", now)).lagging == ("b", "c")
    # c's heartbeat expired: it no longer counts as live, b still lags.
    later = await read_readiness(redis, ISSUER, "k2", now + 10.0)
    assert [v.instance_id for v in later.verifiers] == ["a", "b"]
    assert later.lagging == ("b",)
