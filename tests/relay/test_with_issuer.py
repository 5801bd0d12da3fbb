"""End to end with the real issuer (in-process, manual clock): the issuer's own events and
JWKS reach a partner over real HTTP, and the partner can check every event's issuer signature
itself."""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from issuer.app import create_app
from relay.egress import EgressPolicy
from relay.keysource import SnapshotKeySource
from relay.service import Relay
from subscriber.events import load_announcement_keys, parse_event
from subscriber.history import parse_snapshot
from subscriber.jwks_client import JwksClient
from tests.issuer.conftest import ISSUER, make_settings
from tests.relay.conftest import make_policy
from tests.relay.servers import Receiver, Server, until


@dataclass
class Rig:
    """The real issuer app, a relay reading its stream, and a receiving partner."""

    authority: Any
    http: httpx.AsyncClient
    relay: Relay
    receiver: Receiver
    announce: dict[str, Any]


@contextlib.asynccontextmanager
async def issuer_relay_partner(redis, clock, *, refetch: bool = False) -> AsyncIterator[Rig]:
    """Started relay and registered partner; ``refetch``: the relay refetches the issuer's
    announcement keys on an unknown one, as `keyherald relay` does without pinned keys."""
    app = create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)
    authority = app.state.authority
    await authority.bootstrap()
    receiver = Receiver()
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url=ISSUER) as issuer_http,
        Server(receiver) as server,
    ):
        jwks = JwksClient(issuer_http, ISSUER)
        announce = load_announcement_keys((await jwks.fetch_metadata()).announcement_keys)

        async def refresh() -> Any:
            return load_announcement_keys((await jwks.fetch_metadata()).announcement_keys)

        relay = Relay(
            redis, ISSUER, announce, SnapshotKeySource(jwks, ISSUER, announce, clock=clock),
            policy=make_policy(), egress_policy=EgressPolicy.from_strings(["127.0.0.1"]),
            consumer="relay-e2e", block_ms=50, refresh_announce_keys=refresh if refetch else None,
        )  # fmt: skip
        _, secret = await relay.partners.register(server.url + "/keyherald")
        receiver.secrets.append(secret)
        async with relay:
            yield Rig(authority, issuer_http, relay, receiver, announce)


async def test_issuer_events_reach_a_partner_with_the_full_key_set(redis, clock) -> None:
    async with issuer_relay_partner(redis, clock) as rig:
        authority, receiver, announce = rig.authority, rig.receiver, rig.announce
        added = await authority.rotate()
        await authority.revoke((await authority.signing_key()).kid)
        final = (await authority.snapshot()).version
        await until(lambda: receiver.accepted and receiver.accepted[-1].version == final)
        current = (await rig.http.get("/.well-known/jwks.json")).json()
        current_digest = (await authority.snapshot()).meta["digest"]

    versions = [d.version for d in receiver.got]
    # Every event the issuer wrote (bootstrap, rotation, revocation), once, in order.
    assert versions == list(range(1, final + 1)) and added.version in versions
    assert all(d.verified_by == [0] for d in receiver.got)
    for delivery in receiver.got:
        data = delivery.json["data"]
        # The partner need not trust the relay: the issuer's signature travels with the event.
        event = parse_event({"jws": data["jws"]}, announce, issuer=ISSUER)
        assert event.payload() == data["event"]
        assert data["version"] >= event.version
        # Nor for the key set: the issuer-signed snapshot travels with it.
        snap = parse_snapshot(data["snapshot"], announce, issuer=ISSUER, now=clock(), leeway_s=0)
        assert snap.jwks() == data["jwks"] and snap.version == data["version"]
    last = receiver.got[-1].json["data"]["jwks"]
    assert last["keys"] == current["keys"] and last["keyherald"]["digest"] == current_digest


async def test_an_announcement_key_written_to_redis_never_reaches_a_partner(redis, clock) -> None:
    """Issue 10, attack 4: Mallory overwrites the announcement key fields of the store and
    posts an event she signed. The relay refetches the issuer's metadata on the unknown key,
    which the issuer derives from its sealed key, so the event is dead-lettered unsent."""
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from issuer import keygen
    from subscriber.events import Event, announcement_jwk, sign_event
    from subscriber.redis_keys import event_stream, meta_hash, relay_key

    async with issuer_relay_partner(redis, clock, refetch=True) as rig:
        authority, receiver, announce = rig.authority, rig.receiver, rig.announce
        await until(lambda: len(receiver.accepted) == 2)  # bootstrap's two events
        mallory = Ed25519PrivateKey.generate()
        jwk = announcement_jwk(mallory.public_key())
        await redis.hset(meta_hash(ISSUER), mapping={
            "announce_jwk": json.dumps(jwk), "announce_kid": jwk["kid"],
        })  # fmt: skip
        snap = await authority.store.load()
        attacker = keygen.generate("ES256")
        event = Event(
            "key-added", ISSUER, snap.epoch or "", snap.version + 1, attacker.kid, clock(),
            {"jwk": attacker.jwk, "alg": "ES256", "activate_at": 0.0, "retire_at": None},
            prev=snap.meta.get("digest"), digest="sha256:x",
        )  # fmt: skip
        await redis.xadd(event_stream(ISSUER), sign_event(event, mallory, jwk["kid"]))
        dead = relay_key(ISSUER, "dead")
        await until_async(lambda: redis.xlen(dead), what="forged event dead-lettered")
        ((_, fields),) = await redis.xrange(dead)
        assert b"forged_event" in b" ".join(fields.values())
        genuine = await authority.rotate()  # the issuer restores its store and goes on
        await until(lambda: receiver.accepted[-1].version == genuine.version)
    assert jwk["kid"] not in announce
    for delivery in receiver.got:
        data = delivery.json["data"]
        assert attacker.kid not in {k["kid"] for k in data["jwks"]["keys"]}
        assert parse_event({"jws": data["jws"]}, announce, issuer=ISSUER).kid != attacker.kid


async def until_async(probe, what: str, timeout_s: float = 5.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while not await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
