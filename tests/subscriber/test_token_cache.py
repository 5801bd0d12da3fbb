"""The verified-token cache, attacked: keys leaving, time passing, floods, callers mutating."""

import pytest

from keyherald.redis_server import free_port
from subscriber.clock import ManualClock
from subscriber.errors import InvalidClaims, InvalidToken, KeyNotUsable
from subscriber.events import Event
from subscriber.keyset import KeySet
from subscriber.token_cache import TokenCache
from subscriber.verify import VerifyOptions
from tests.keys import es256_jwk
from tests.subscriber.conftest import AUDIENCE, Issuer, eventually, with_kid
from tests.subscriber.test_keyset import snapshot

# -- against the real issuer and stream ----------------------------------------------------


async def test_a_repeated_token_is_served_from_the_cache(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        token = await issuer.token()
        first = verifier.verify(token)
        assert token in verifier.keyset.tokens
        assert verifier.verify(token) == first
        metrics = verifier.metrics
        assert metrics.value("keyherald_verifications_total", outcome="valid", reason="ok") == 2


async def test_a_revoked_key_refuses_its_cached_token_at_once(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        token = await issuer.token()
        kid = (await issuer.authority.signing_key()).kid
        verifier.verify(token)
        verifier.verify(token)
        assert token in verifier.keyset.tokens
        applied = await issuer.authority.revoke(kid)
        await eventually(lambda: verifier.keyset.version == applied.version, what="revocation")
        # No await in between: the view that dropped the key dropped the token with it.
        assert token not in verifier.keyset.tokens
        with pytest.raises(KeyNotUsable) as info:
            verifier.verify(token)
        assert info.value.reason == "revoked_key"


async def test_a_retired_key_refuses_its_cached_token_at_once(issuer: Issuer) -> None:
    # The verifier's own clock stays at the token's time, so the token is still unexpired
    # when the issuer, far ahead, retires its key after the grace: only the key decides.
    verifier_clock = ManualClock(issuer.clock.now)
    async with issuer.verifier(clock=verifier_clock) as verifier:
        token = await issuer.token()
        old_kid = (await issuer.authority.signing_key()).kid
        verifier.verify(token)
        assert token in verifier.keyset.tokens
        new_kid = (await issuer.authority.rotate()).events[-1].kid
        issuer.clock.advance(issuer.settings.lead_s)
        await issuer.authority.activate(new_kid)
        await eventually(lambda: verifier.keyset.view.states.get(old_kid) == "retiring")
        assert verifier.verify(token)  # retiring still verifies, from the cache
        issuer.clock.advance(issuer.settings.retire_grace_s)
        applied = await issuer.authority.retire(old_kid)
        await eventually(lambda: verifier.keyset.version == applied.version, what="retirement")
        assert token not in verifier.keyset.tokens
        with pytest.raises(KeyNotUsable) as info:
            verifier.verify(token)
        assert info.value.reason == "retired_key"


async def test_a_flushed_and_restored_store_keeps_cached_tokens_valid(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        token = await issuer.token()
        verifier.verify(token)
        await issuer.redis.flushdb()
        await issuer.authority.snapshot()  # the issuer's next read writes its commits back
        await eventually(lambda: verifier.health().state == "live", what="resynced")
        assert verifier.verify(token)["sub"] == "u1"


def test_an_epoch_change_drops_the_tokens_of_the_old_store() -> None:
    a, b = es256_jwk(), es256_jwk()
    keyset = _keyset_holding(a)
    keyset.tokens.put("t1", keyset.view.keys[a["kid"]], a["kid"], dict(CLAIMS), b"{}")
    assert keyset.replace_from_snapshot(snapshot(1, "e2", {b["kid"]: "active"}, b), now=1.0)
    assert "t1" not in keyset.tokens


async def test_a_token_expired_between_two_calls_is_refused(issuer: Issuer) -> None:
    async with issuer.verifier(leeway_s=5.0) as verifier:
        token = await issuer.app.state.signer.sign({"aud": AUDIENCE, "sub": "u1"}, ttl_s=60)
        exp = verifier.verify(token)["exp"]
        issuer.clock.set(exp + 4.9)  # inside the leeway: still valid, from the cache
        assert verifier.verify(token)["sub"] == "u1"
        assert token in verifier.keyset.tokens
        issuer.clock.set(exp + 5.0)
        with pytest.raises(InvalidClaims) as info:
            verifier.verify(token)
        assert info.value.reason == "expired"
        assert token not in verifier.keyset.tokens


async def test_a_stale_verifier_refuses_cached_tokens(issuer: Issuer) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    token = await issuer.token()
    async with issuer.verifier(redis_url=dead, max_staleness_s=60.0) as verifier:
        verifier.verify(token)
        assert token in verifier.keyset.tokens
        issuer.clock.advance(61.0)
        with pytest.raises(KeyNotUsable) as info:
            verifier.verify(token)
        assert info.value.reason == "keys_stale"


async def test_a_flood_of_distinct_tokens_stays_within_the_bound(issuer: Issuer) -> None:
    async with issuer.verifier(token_cache_size=8) as verifier:
        tokens = verifier.keyset.tokens
        for i in range(40):
            verifier.verify(await issuer.token(jti=f"t{i}"))
            assert len(tokens) <= 8
        held = len(tokens)
        valid = await issuer.token(jti="forged")
        forged = [with_kid(valid, f"kid-{i}") for i in range(50)]
        signing_input, _, signature = valid.rpartition(".")
        forged += [f"{signing_input}.{i:04d}{signature[4:]}" for i in range(50)]
        for token in forged:
            with pytest.raises(InvalidToken) as info:
                verifier.verify(token)
            assert info.value.reason in ("unknown_kid", "bad_signature")
        assert len(tokens) == held  # refused tokens are never stored, nor evict anything


async def test_long_tokens_are_verified_every_time_never_stored(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        token = await issuer.token(pad="x" * 5000)
        assert verifier.verify(token)["pad"] == "x" * 5000
        assert token not in verifier.keyset.tokens


async def test_callers_changing_their_claims_do_not_change_the_next_callers(
    issuer: Issuer,
) -> None:
    async with issuer.verifier() as verifier:
        flat = await issuer.token(role="reader")
        nested = await issuer.token(roles=["reader"], extra={"tier": "free"})
        for _ in range(3):  # the first call stores; the later ones are hits
            claims = verifier.verify(flat)
            assert claims["role"] == "reader"
            claims["role"] = "admin"
            claims = verifier.verify(nested)
            assert claims["roles"] == ["reader"] and claims["extra"] == {"tier": "free"}
            claims["roles"].append("admin")
            claims["extra"]["tier"] = "gold"


async def test_the_cache_can_be_turned_off_and_refuses_a_bad_size(issuer: Issuer) -> None:
    async with issuer.verifier(token_cache_size=0) as verifier:
        token = await issuer.token()
        verifier.verify(token)
        assert len(verifier.keyset.tokens) == 0
    with pytest.raises(ValueError, match="token_cache_size must be an integer >= 0"):
        issuer.verifier(token_cache_size=-1)


# -- the key set owns the eviction ---------------------------------------------------------

ISSUER = "https://id.example.com"
OPTIONS = VerifyOptions(issuer=ISSUER, audience="a")
NOW = 1_000.0
CLAIMS = {"iss": ISSUER, "aud": "a", "exp": NOW + 100}


def _keyset_holding(jwk: dict[str, object]) -> KeySet:
    keyset = KeySet(ISSUER)
    assert keyset.replace_from_snapshot(snapshot(1, "e1", {jwk["kid"]: "active"}, jwk), now=0.0)
    return keyset


def test_every_new_view_drops_the_tokens_of_keys_it_no_longer_holds() -> None:
    a = es256_jwk()
    keyset = _keyset_holding(a)
    key = keyset.view.keys[a["kid"]]
    keyset.tokens.put("t1", key, a["kid"], dict(CLAIMS), b"{}")
    retired = Event("key-retired", ISSUER, "e1", 2, a["kid"], 3.0, {"reason": "revoked"})
    keyset.apply_event(retired, now=1.0)
    assert "t1" not in keyset.tokens


def test_a_token_stored_by_a_verification_that_raced_a_revocation_is_refused() -> None:
    # A verification on another thread read the old view, and stores its result after the
    # revocation replaced the view: the hit still checks the key against the current view.
    a = es256_jwk()
    keyset = _keyset_holding(a)
    key = keyset.view.keys[a["kid"]]
    retired = Event("key-retired", ISSUER, "e1", 2, a["kid"], 3.0, {"reason": "revoked"})
    keyset.apply_event(retired, now=1.0)
    keyset.tokens.put("t1", key, a["kid"], dict(CLAIMS), b"{}")
    assert keyset.tokens.get("t1", keyset.view.keys, OPTIONS, NOW) is None
    assert "t1" not in keyset.tokens


def test_a_full_cache_is_cleared_not_grown() -> None:
    a = es256_jwk()
    keyset = _keyset_holding(a)
    cache = TokenCache(max_entries=4)
    key = keyset.view.keys[a["kid"]]
    for i in range(10):
        cache.put(f"t{i}", key, a["kid"], dict(CLAIMS), b"{}")
        assert len(cache) <= 4
    assert cache.get("t9", keyset.view.keys, OPTIONS, NOW) == CLAIMS
    with pytest.raises(ValueError, match="max_entries must be an integer >= 0"):
        TokenCache(max_entries=True)
