"""A forged, unsigned, replayed or reordered stream entry changes nothing (real issuer)."""

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subscriber.events import Event, sign_event
from subscriber.jws import b64url_encode, compact_json
from subscriber.redis_keys import event_stream
from tests.subscriber.conftest import ISSUER, Issuer, eventually
from tests.subscriber.test_keyset import es256_jwk


def rejected(verifier, reason: str = "forged_event") -> float:
    return verifier.metrics.value("keyherald_events_rejected_total", reason=reason)


def ignored(verifier) -> float:
    return verifier.metrics.value("keyherald_events_ignored_total", outcome="ignored")


async def test_forged_and_unsigned_events_change_nothing(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        view = verifier.keyset.view
        announce_kid = next(iter(verifier._follower.announcement_keys))
        attacker = es256_jwk()
        event = Event(
            "key-added", ISSUER, view.epoch or "", view.version + 1, attacker["kid"], 0.0,
            {"jwk": attacker, "alg": "ES256", "activate_at": 0.0, "retire_at": None},
        )  # fmt: skip
        stream = event_stream(ISSUER)
        # Signed by a key that is not the announcement key, under its kid.
        await issuer.redis.xadd(
            stream, sign_event(event, Ed25519PrivateKey.generate(), announce_kid)
        )
        # Unsigned: alg "none", empty signature.
        header = b64url_encode(compact_json({"alg": "none", "kid": announce_kid}))
        body = b64url_encode(compact_json(event.payload()))
        await issuer.redis.xadd(
            stream, {"type": "key-added", "version": "99", "jws": f"{header}.{body}."}
        )
        await eventually(lambda: rejected(verifier) == 2, what="both refused")
        assert attacker["kid"] not in verifier.keyset.view.keys
        assert verifier.keyset.version == view.version
        assert verifier.keyset.view.keys == view.keys
        # The follower carries on with genuine events.
        applied = await issuer.authority.rotate()
        await eventually(lambda: verifier.keyset.version == applied.version, what="real event")


async def test_replayed_and_reordered_events_change_nothing(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        await issuer.authority.rotate()
        applied = await issuer.advance(issuer.settings.lead_s)
        await eventually(lambda: verifier.keyset.version == applied[-1].version)
        view = verifier.keyset.view
        stream = event_stream(ISSUER)
        entries = await issuer.redis.xrange(stream)
        assert len(entries) >= 4
        for _, fields in reversed(entries):  # every genuine event again, newest first
            await issuer.redis.xadd(stream, fields)
        await eventually(lambda: ignored(verifier) >= len(entries), what="replays ignored")
        assert verifier.keyset.view == view
        assert rejected(verifier) == 0


async def test_routing_hints_are_not_trusted(issuer: Issuer) -> None:
    async with issuer.verifier() as verifier:
        view = verifier.keyset.view
        (_, fields), *_ = await issuer.redis.xrevrange(event_stream(ISSUER), count=1)
        lying = {**fields, b"type": b"key-retired", b"version": str(view.version + 1).encode()}
        await issuer.redis.xadd(event_stream(ISSUER), lying)
        await eventually(lambda: ignored(verifier) >= 1, what="replay ignored")
        assert verifier.keyset.view == view
        assert json.dumps(dict(verifier.keyset.view.states))  # still a plain kid -> state map
