"""An attacker who can write to Redis, but holds neither the KEK nor the announcement key.

Each test is one attack of issue 10 against the real issuer app (HTTP through its ASGI
transport), a real verifier and a real Redis. What must hold: no forged token is accepted, no
revoked key verifies again, the issuer never signs with a revoked key, and the cost of a
replay stays bounded.
"""

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from issuer import keygen
from issuer.errors import StoreTampered
from issuer.records import KeyRecord
from issuer.signer import encode_jwt
from subscriber.errors import KeyNotFound, KeyNotUsable
from subscriber.events import Event, announcement_jwk, sign_event
from subscriber.jws import b64url_decode
from subscriber.redis_keys import event_stream, keys_hash, meta_hash
from tests.subscriber.conftest import AUDIENCE, ISSUER, Issuer, eventually, issuer_app

pytestmark = pytest.mark.timeout(60)


def attacker_token(pair: keygen.KeyPair, now: float) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now, "exp": now + 300}
    return encode_jwt(pair, claims)


async def inject_key(redis: aioredis.Redis, pair: keygen.KeyPair, now: float) -> None:
    """Attack 1: an active record with the attacker's key, a version bump, a junk entry."""
    record = KeyRecord(kid=pair.kid, alg=pair.alg, state="active", created_at=now,
                       activate_at=now, activated_at=now, jwk=pair.jwk)  # fmt: skip
    await redis.hset(keys_hash(ISSUER), pair.kid, record.to_json())
    await redis.hincrby(meta_hash(ISSUER), "version", 1)
    await redis.xadd(event_stream(ISSUER), {"type": "key-added", "version": "999", "jws": "x.y.z"})


async def public_kids(issuer: Issuer) -> set[str]:
    response = await issuer.http.get("/.well-known/jwks.json")
    return {k["kid"] for k in response.json()["keys"]} if response.status_code == 200 else set()


async def test_injected_key_is_never_served_nor_trusted(issuer: Issuer) -> None:
    pinned = await issuer.authority.announcement_jwks()
    async with issuer.verifier(announcement_keys=pinned) as verifier:
        genuine = await issuer.token()
        pair = keygen.generate("ES256")
        await inject_key(issuer.redis, pair, issuer.clock())
        forged = attacker_token(pair, issuer.clock())
        # The junk entry makes the verifier resync; the issuer finds the tampering on that read
        # and writes its own key set back.
        await eventually(lambda: issuer.authority.tamper_count >= 1, what="tampering noticed")
        await eventually(lambda: verifier.keyset.version > 2, what="resync to the restored set")
        with pytest.raises(KeyNotFound):
            verifier.verify(forged)
        assert verifier.verify(genuine)["sub"] == "u1"
        assert pair.kid not in await public_kids(issuer)
        assert pair.kid not in (await issuer.redis.hgetall(keys_hash(ISSUER))).keys()
        # Operators see it: the tampering and the restore are counted.
        admin = {"Authorization": "Bearer t0ken-for-tests"}
        text = (await issuer.http.get("/admin/metrics", headers=admin)).text
        assert "keyherald_issuer_store_tampered_total 1.0" in text
        assert 'keyherald_issuer_store_restores_total{reason="tampered"} 1.0' in text
        assert (await issuer.http.get("/admin/metrics")).status_code == 401


async def test_injected_key_on_a_fresh_issuer_is_a_503_not_a_key(
    redis: aioredis.Redis, clock: Any
) -> None:
    # An issuer that never saw the store authenticate has nothing to restore: it serves nothing.
    app = issuer_app(redis, clock)
    await app.state.authority.snapshot()
    pair = keygen.generate("ES256")
    await inject_key(redis, pair, clock())
    fresh = issuer_app(redis, clock)
    with pytest.raises(StoreTampered):
        await fresh.state.authority.snapshot()
    transport = httpx.ASGITransport(app=fresh)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        admin = {"Authorization": "Bearer t0ken-for-tests"}
        for path in (
            "/.well-known/jwks.json",
            "/.well-known/keyherald-snapshot.jwt",
            "/.well-known/openid-configuration",
            "/admin/keys",
        ):
            response = await http.get(path, headers=admin)
            assert response.status_code == 503, path
            assert response.json()["error"] == "store_tampered"
            assert pair.kid not in response.text


async def revoke_current(issuer: Issuer) -> tuple[str, str]:
    token = await issuer.token()
    kid = (await issuer.authority.signing_key()).kid
    await issuer.authority.revoke(kid)
    return kid, token


async def test_revived_record_neither_verifies_nor_signs(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        kid, old_token = await revoke_current(issuer)
        await eventually(lambda: kid in verifier.keyset.view.gone, what="revocation")
        # Attack 2: flip the revoked record back to active and bump the version.
        raw = json.loads(await issuer.redis.hget(keys_hash(ISSUER), kid))
        raw.update(state="active", reason=None, ended_at=None)
        for other, value in (await issuer.redis.hgetall(keys_hash(ISSUER))).items():
            other_record = json.loads(value)
            if other_record["state"] == "active":
                other_record["state"] = "retiring"
                await issuer.redis.hset(keys_hash(ISSUER), other, json.dumps(other_record))
        await issuer.redis.hset(keys_hash(ISSUER), kid, json.dumps(raw))
        await issuer.redis.hincrby(meta_hash(ISSUER), "version", 1)
        await issuer.redis.xadd(event_stream(ISSUER), {"type": "x", "version": "0", "jws": "."})
        new_token = await issuer.token()  # reads the store: tampering found, set restored
        assert issuer.authority.tamper_count >= 1
        assert (await issuer.authority.signing_key()).kid != kid
        await eventually(lambda: verifier.keyset.version > 4, what="restored set")
        with pytest.raises(KeyNotUsable) as info:
            verifier.verify(old_token)
        assert info.value.reason == "revoked_key"
        assert verifier.verify(new_token)
        assert kid not in await public_kids(issuer)


async def test_restored_backup_after_a_revocation_is_refused(issuer: Issuer) -> None:
    """Attack 3: DUMP the store, revoke, then FLUSHALL + RESTORE the dump + a version bump.
    Every byte is the issuer's own authentic data, only old."""
    async with issuer.verifier() as verifier:
        names = [keys_hash(ISSUER), meta_hash(ISSUER), event_stream(ISSUER)]
        dump = {name: await issuer.redis.dump(name) for name in names}
        kid, old_token = await revoke_current(issuer)
        await eventually(lambda: kid in verifier.keyset.view.gone, what="revocation")
        await issuer.redis.flushdb()
        for name, value in dump.items():
            await issuer.redis.restore(name, 0, value)
        await issuer.redis.hincrby(meta_hash(ISSUER), "version", 5)
        new_token = await issuer.token()
        assert (await issuer.authority.signing_key()).kid != kid
        await eventually(lambda: verifier.keyset.version > 4, what="restored set")
        with pytest.raises(KeyNotUsable):
            verifier.verify(old_token)
        assert verifier.verify(new_token)
        assert kid not in await public_kids(issuer)


async def test_the_exact_state_before_a_revocation_signs_and_serves_nothing_revoked(
    issuer: Issuer,
) -> None:
    """A failover that lost the revocation's commit: meta and records back to exactly the
    version before it, with no bump. Documents and the signing key kept for that version
    must not be taken up again: the store is behind what this issuer committed."""
    names = [keys_hash(ISSUER), meta_hash(ISSUER)]
    before = {name: await issuer.redis.dump(name) for name in names}

    async def lose_the_revocation() -> None:
        for name, value in before.items():
            await issuer.redis.restore(name, 0, value, replace=True)

    snapshot_path = "/.well-known/keyherald-snapshot.jwt"
    assert (await issuer.http.get("/.well-known/jwks.json")).status_code == 200
    assert (await issuer.http.get(snapshot_path)).status_code == 200
    kid, _ = await revoke_current(issuer)
    # Each read finds the store behind and writes the lost commits back: lose them again
    # before the next, so that each cache meets the old head.
    await lose_the_revocation()
    assert kid not in await public_kids(issuer)
    await lose_the_revocation()
    assert (await issuer.authority.signing_key()).kid != kid
    await lose_the_revocation()
    signed = (await issuer.http.get(snapshot_path)).text
    body = json.loads(b64url_decode(signed.split(".")[1]))
    assert kid not in {k["jwk"]["kid"] for k in body["keys"]}
    assert body["gone"] == {kid: "revoked"}
    assert issuer.authority.restores == {"replayed": 3}


async def test_rollback_across_an_issuer_restart_with_a_state_dir(
    redis: aioredis.Redis, clock: Any, tmp_path: Any
) -> None:
    """The same rollback while no issuer runs: the state file is the high-water mark."""
    app = issuer_app(redis, clock, state_dir=str(tmp_path))
    authority = app.state.authority
    await authority.snapshot()
    names = [keys_hash(ISSUER), meta_hash(ISSUER), event_stream(ISSUER)]
    dump = {name: await redis.dump(name) for name in names}
    kid = (await authority.signing_key()).kid
    await authority.revoke(kid)
    await redis.flushdb()
    for name, value in dump.items():
        await redis.restore(name, 0, value)
    restarted = issuer_app(redis, clock, state_dir=str(tmp_path)).state.authority
    snap = await restarted.snapshot()
    assert snap.keys[kid].state == "revoked"
    assert (await restarted.signing_key()).kid != kid
    assert restarted.hwm.path is not None and restarted.hwm.path.exists()


async def test_announcement_key_written_to_redis_is_not_served(issuer: Issuer) -> None:
    """Attack 4: overwrite the announcement key fields of the store's meta."""
    before = await issuer.authority.announcement_jwks()
    mallory = Ed25519PrivateKey.generate()
    jwk = announcement_jwk(mallory.public_key())
    await issuer.redis.hset(
        meta_hash(ISSUER), mapping={"announce_jwk": json.dumps(jwk), "announce_kid": jwk["kid"]}
    )
    response = await issuer.http.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    assert response.json()["keyherald"]["announcement_keys"] == before
    assert issuer.authority.tamper_count >= 1
    # A verifier that takes its announcement keys from that metadata refuses Mallory's event.
    async with issuer.verifier() as verifier:
        view = verifier.keyset.view
        attacker = keygen.generate("ES256")
        event = Event(
            "key-added", ISSUER, view.epoch or "", view.version + 1, attacker.kid, issuer.clock(),
            {"jwk": attacker.jwk, "alg": "ES256", "activate_at": 0.0, "retire_at": None},
            prev=view.digest, digest="sha256:x",
        )  # fmt: skip
        await issuer.redis.xadd(event_stream(ISSUER), sign_event(event, mallory, jwk["kid"]))
        await eventually(
            lambda: (
                verifier.metrics.value("keyherald_events_rejected_total", reason="forged_event")
                >= 1
            ),
            what="forged event refused",
        )
        with pytest.raises(KeyNotFound):
            verifier.verify(attacker_token(attacker, issuer.clock()))


async def test_replayed_old_epoch_entries_cost_one_fetch(issuer: Issuer) -> None:
    """Attack 5: after a store loss, 1,000 genuine entries of the lost epoch, signed by the
    announcement key verifiers still trust, are replayed to a freshly started verifier."""
    old_entries = await issuer.redis.xrange(event_stream(ISSUER))
    # An issuer that lost its high-water mark (no state dir, restarted) but kept its
    # announcement key rebuilds the lost store under a new epoch.
    issuer.authority.hwm.snapshot = None
    await issuer.redis.flushdb()
    await issuer.authority.snapshot()
    async with issuer.verifier() as verifier:
        before = issuer.transport.snapshot_fetches()
        for i in range(1_000):
            _, fields = old_entries[i % len(old_entries)]
            last = await issuer.redis.xadd(event_stream(ISSUER), fields)
        last_id = last.decode() if isinstance(last, bytes) else last
        await eventually(
            lambda: verifier._follower.last_id == last_id, timeout_s=20, what="replays read"
        )

        def ignored(outcome: str) -> float:
            return verifier.metrics.value("keyherald_events_ignored_total", outcome=outcome)

        # The first one costs a resync (its epoch is not the snapshot's); the rest are dropped,
        # unread when the resync moved past them (it follows from the stream's head).
        resyncs = verifier.metrics.value("keyherald_resyncs_total", cause="new_epoch")
        assert resyncs == 1 and ignored("new_epoch") == 0
        assert ignored("old_epoch") >= 900
        assert issuer.transport.snapshot_fetches() - before <= 1
        assert not verifier.metrics.value("keyherald_events_rejected_total", reason="forged_event")
        assert verifier.verify(await issuer.token())


async def test_a_flood_of_junk_entries_costs_one_fetch_per_cooldown(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        before = issuer.transport.snapshot_fetches()
        for i in range(1_000):
            await issuer.redis.xadd(event_stream(ISSUER), {"type": "x", "jws": f"junk.{i}.x"})
        await eventually(
            lambda: (
                verifier.metrics.value("keyherald_events_rejected_total", reason="malformed_event")
                >= 1_000
            ),
            timeout_s=20,
            what="junk refused",
        )
        assert issuer.transport.snapshot_fetches() - before <= 1


async def alter_record_behind_the_meta(issuer: Issuer, kid: str) -> keygen.KeyPair:
    """Swap the public key of ``kid``'s record for Mallory's, leaving the meta hash as it is
    (so the version, digest and MAC the issuer compares stay the same)."""
    mallory = keygen.generate("ES256")
    raw = json.loads(await issuer.redis.hget(keys_hash(ISSUER), kid))
    raw["jwk"] = {**mallory.jwk, "kid": kid}
    await issuer.redis.hset(keys_hash(ISSUER), kid, json.dumps(raw))
    return mallory


async def test_record_altered_behind_an_unchanged_meta_is_never_used(issuer: Issuer) -> None:
    """A change is built on the key set the issuer last authenticated: a record rewritten in
    Redis while the meta stays the same is not what the issuer serves, signs or announces, and
    the next full read (each freshness record) finds it and writes the genuine set back."""
    kid = (await issuer.authority.signing_key()).kid
    genuine = (await issuer.http.get("/.well-known/jwks.json")).json()["keys"]
    mallory = await alter_record_behind_the_meta(issuer, kid)
    admin = {"Authorization": "Bearer t0ken-for-tests"}
    rotated = await issuer.http.post("/admin/rotate", headers=admin)
    assert rotated.status_code == 201
    served = (await issuer.http.get("/.well-known/jwks.json")).json()["keys"]
    assert [k for k in served if k["kid"] == kid] == [k for k in genuine if k["kid"] == kid]
    snapshot = (await issuer.http.get("/.well-known/keyherald-snapshot.jwt")).text
    assert mallory.jwk["x"] not in json.dumps(served) + snapshot
    async with issuer.verifier() as verifier:
        assert verifier.verify(await issuer.token())["sub"] == "u1"
        assert issuer.authority.tamper_count == 0  # not read yet: nothing acted on it
        await issuer.fresh()  # the scheduler's freshness record reads the store in full
        assert issuer.authority.tamper_count == 1
        assert issuer.authority.restores == {"tampered": 1}
        stored = json.loads(await issuer.redis.hget(keys_hash(ISSUER), kid))
        assert stored["jwk"]["x"] != mallory.jwk["x"]
        await eventually(lambda: verifier.keyset.version > 3, what="the restored set")
        assert verifier.verify(await issuer.token())["sub"] == "u1"


async def test_record_altered_behind_an_unchanged_meta_is_found_within_an_interval(
    issuer: Issuer,
) -> None:
    """Without a freshness record (a replica that is not the scheduler leader), the store is
    still read in full once the last full read is a freshness interval old."""
    kid = (await issuer.authority.signing_key()).kid
    await alter_record_behind_the_meta(issuer, kid)
    await issuer.authority.keys()
    assert issuer.authority.tamper_count == 0
    issuer.clock.advance(issuer.authority.freshness_interval_s)
    await issuer.authority.keys()
    assert issuer.authority.tamper_count == 1
    assert issuer.authority.restores == {"tampered": 1}


async def test_a_freshness_read_racing_a_revocation_then_a_rollback_revives_nothing(
    issuer: Issuer,
) -> None:
    """A freshness read lands while a revocation's commit is in flight (writes held back by
    ``CLIENT PAUSE WRITE``), so it reads the key set from before the revocation. Redis then
    goes back to exactly that state (a failover that lost the commit, or a copy of it): the
    issuer must not take the store's unchanged-looking meta as leave to serve, sign with or
    build on the key set it revoked, nor reuse the revocation's version."""
    kid = (await issuer.authority.signing_key()).kid
    names = [keys_hash(ISSUER), meta_hash(ISSUER)]
    before = {name: await issuer.redis.dump(name) for name in names}
    await issuer.redis.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        revoking = asyncio.create_task(issuer.authority.revoke(kid))

        async def commit_held() -> bool:
            clients = await issuer.redis.client_list()
            return any(c.get("cmd") in ("evalsha", "eval") for c in clients)

        await eventually(commit_held, what="the revocation's commit held back")
        await issuer.authority.snapshot(full=True)  # what publish_freshness reads first
    finally:
        await issuer.redis.execute_command("CLIENT", "UNPAUSE")
    revoked = await revoking
    for name, value in before.items():
        await issuer.redis.restore(name, 0, value, replace=True)
    assert (await issuer.authority.signing_key()).kid != kid
    assert kid not in await public_kids(issuer)
    rotated = await issuer.authority.rotate()
    assert rotated.version > revoked.version
