"""The Verifier against the real issuer app and a real Redis: bootstrap, follow, lifecycle."""

import asyncio
import random

import pytest

from keyherald.redis_server import free_port
from subscriber.errors import KeyNotFound, KeyNotUsable
from tests.subscriber.conftest import Issuer, eventually, with_kid


async def test_bootstrap_verifies_a_token_of_the_active_key(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        claims = verifier.verify(await issuer.token())
        health = verifier.health()
    assert claims["sub"] == "u1"
    assert health.state == "live"
    assert health.version >= 1
    assert list(health.kids.values()) == ["active"]


async def test_new_key_is_cached_by_every_verifier_before_it_activates(issuer: Issuer) -> None:
    verifiers = [await issuer.verifier().__aenter__() for _ in range(5)]
    applied = await issuer.authority.rotate()
    kid = applied.events[-1].kid
    for v in verifiers:
        await eventually(lambda v=v: kid in v.keyset.view.keys, what="pending key cached")
        assert v.keyset.view.states[kid] == "pending"
    await issuer.advance(issuer.settings.lead_s, tick=False)
    await issuer.authority.activate(kid)
    token = await issuer.token()
    for v in verifiers:
        assert v.verify(token)["sub"] == "u1"  # no wait: the key was already held


async def test_retired_and_revoked_keys_stop_verifying(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        old_token = await issuer.token()
        old_kid = (await issuer.authority.signing_key()).kid
        applied = await issuer.authority.revoke(old_kid)
        await eventually(lambda: verifier.keyset.version == applied.version, what="revocation")
        with pytest.raises(KeyNotUsable) as info:
            verifier.verify(old_token)
        assert info.value.reason == "revoked_key"
        assert verifier.verify(await issuer.token())  # the replacement key, activated at once
        with pytest.raises(KeyNotFound) as missing:
            verifier.verify(with_kid(old_token, "never-published"))
        assert missing.value.reason == "unknown_kid"


async def test_retired_key_is_refused_after_its_grace(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        old_token = await issuer.token()
        old_kid = (await issuer.authority.signing_key()).kid
        await issuer.authority.rotate()
        await issuer.advance(
            issuer.settings.lead_s
        )  # the new key activates, the old one is retiring
        await eventually(lambda: verifier.keyset.view.states.get(old_kid) == "retiring")
        assert old_kid in verifier.keyset.view.keys  # verifies through its grace
        applied = await issuer.advance(issuer.settings.retire_grace_s + 1)
        assert any(e.type == "key-retired" and e.kid == old_kid for a in applied for e in a.events)
        await eventually(lambda: old_kid in verifier.keyset.view.gone, what="key-retired")
        with pytest.raises(KeyNotUsable) as info:
            verifier.verify(old_token)
        assert info.value.reason == "retired_key"


async def test_revocation_reaches_a_running_verifier_in_under_a_second(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        token = await issuer.token()
        kid = (await issuer.authority.signing_key()).kid
        verifier.verify(token)
        await issuer.authority.revoke(kid)

        def refused() -> bool:
            try:
                verifier.verify(token)
            except KeyNotUsable:
                return True
            return False

        took_s = await eventually(refused, timeout_s=1.0, what="revocation")
        print(f"revocation propagated in {took_s * 1000:.2f} ms")


async def test_unknown_kids_cause_no_fetch_while_live(issuer: Issuer) -> None:
    rng = random.Random(7)
    async with issuer.verifier() as verifier:
        token = await issuer.token()
        before = issuer.transport.snapshot_fetches()
        for _ in range(10_000):
            with pytest.raises(KeyNotFound):
                verifier.verify(with_kid(token, rng.randbytes(16).hex()))
        await asyncio.sleep(0.05)  # give any (wrongly) scheduled refresh a chance to run
        assert issuer.transport.snapshot_fetches() == before
        assert verifier.health().state == "live"


async def test_unknown_kids_while_degraded_refresh_once_per_cooldown(issuer: Issuer) -> None:
    rng = random.Random(11)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    month_s = 30 * 86_400.0
    async with issuer.verifier(
        redis_url=dead, unknown_kid_cooldown_s=30.0, max_staleness_s=month_s
    ) as verifier:
        assert verifier.health().state == "degraded"
        token = await issuer.token()
        assert verifier.verify(token)  # bootstrapped from the JWKS alone
        start = issuer.transport.snapshot_fetches()
        # A real new key appears while a flood of random kids is going on.
        await issuer.authority.rotate()
        await issuer.advance(issuer.settings.lead_s)
        new_token = await issuer.token()
        for round_ in range(3):
            for _ in range(10_000):
                with pytest.raises(KeyNotFound):
                    verifier.verify(with_kid(token, rng.randbytes(16).hex()))
            await eventually(lambda: not verifier._refresher.requested, what="refresh done")
            assert issuer.transport.snapshot_fetches() - start == round_ + 1
            issuer.clock.advance(30.0)
        # The flood used each cooldown's refresh, and each refresh brought the real key.
        assert verifier.verify(new_token)


async def test_stale_keys_fail_closed_by_default(issuer: Issuer) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    token = await issuer.token()
    async with (
        issuer.verifier(redis_url=dead, max_staleness_s=60.0) as closed,
        issuer.verifier(
            redis_url=dead, max_staleness_s=60.0, stale_policy="keep_verifying"
        ) as kept,
    ):
        assert closed.verify(token) and kept.verify(token)
        issuer.clock.advance(61.0)
        with pytest.raises(KeyNotUsable) as info:
            closed.verify(token)
        assert info.value.reason == "keys_stale"
        assert closed.health().state == kept.health().state == "stale"
        assert kept.verify(token)
