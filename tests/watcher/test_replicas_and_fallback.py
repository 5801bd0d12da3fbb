"""Watcher replicas share one poller through the fenced lease; a verifier whose stream and
watcher are both out of reach falls back to the provider's own JWKS, at most once per
cooldown."""

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from issuer.errors import LeaseLost
from issuer.lease import FencedLease
from keyherald.redis_server import free_port
from keyherald.standin_idp import JWKS_PATH, StandInIdP
from subscriber.errors import KeyNotFound
from subscriber.events import announcement_jwk, load_announcement_keys, parse_event
from subscriber.jwk import load_public_jwk
from subscriber.redis_keys import event_stream
from subscriber.verifier import Verifier
from tests.subscriber.conftest import with_kid
from tests.watcher.conftest import AUDIENCE, KEK, eventually, fleet
from watcher.diff import KeySetDiff
from watcher.ledger import UpstreamLedger


async def test_replicas_elect_one_poller_and_announce_each_kid_once(redis_url: str) -> None:
    async with fleet(redis_url, replicas=3) as f:
        verifier = await f.verifier()
        for _ in range(3):
            kid = f.idp.publish_next()
            await eventually(lambda kid=kid: kid in verifier.keyset.view.keys)
        assert sum(w.leading for w in f.watches) == 1
        assert all(w.poller.last is None for w in f.watches if not w.leading)  # never polled
        leader = f.leader()
        keys = load_announcement_keys(await leader.ledger.announcement_jwks())
        entries = await leader.redis.xrange(event_stream(f.issuer))
        added = [parse_event(e, keys, issuer=f.issuer).kid for _, e in entries]
        assert len(added) == len(set(added)) == 4


async def test_a_deposed_leader_writes_nothing(redis: aioredis.Redis) -> None:
    issuer = "https://idp.example/"
    ledger = UpstreamLedger(redis=redis, issuer=issuer, kek=KEK, retention_s=86_400.0)
    await ledger.snapshot()
    old = FencedLease(redis, issuer, "old", ttl_s=0.05)
    assert await old.ensure()
    await asyncio.sleep(0.1)  # the old leader paused past its lease
    new = FencedLease(redis, issuer, "new", ttl_s=5)
    assert await new.ensure()
    key = load_public_jwk(StandInIdP().jwks["keys"][0])
    with pytest.raises(LeaseLost):
        await ledger.announce(KeySetDiff(added=(key,)), fence=old.token)
    assert (await ledger.snapshot()).version == 0
    applied = await ledger.announce(KeySetDiff(added=(key,)), fence=new.token)
    assert applied is not None and applied.version == 1
    # Announcing what the store already holds (another replica was first) commits nothing.
    assert await ledger.announce(KeySetDiff(added=(key,)), fence=new.token) is None


async def test_with_stream_and_watcher_down_the_provider_jwks_is_the_fallback() -> None:
    idp = StandInIdP(max_age_s=60)
    async with idp.serve() as issuer, httpx.AsyncClient() as http:
        dead = f"http://127.0.0.1:{free_port()}"
        verifier = Verifier(
            issuer=issuer,
            audience=AUDIENCE,
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            announcer=dead,
            # Pinned: with the watcher down, its metadata cannot name them.
            announcement_keys=[announcement_jwk(Ed25519PrivateKey.generate().public_key())],
            http_client=http,
            registry=CollectorRegistry(),
            presence=False,
            unknown_kid_cooldown_s=0.3,
        )
        async with verifier:
            assert verifier.health().state == "degraded"
            token = idp.mint({"sub": "u1", "aud": AUDIENCE})
            assert verifier.verify(token)["sub"] == "u1"
            before = idp.requests[JWKS_PATH]
            idp.rotate_at_once()
            new_token = idp.mint({"sub": "u1", "aud": AUDIENCE})
            loop = asyncio.get_running_loop()
            start = loop.time()
            accepted = False
            while not accepted:
                for n in range(200):  # a flood of unknown kids on top of the real one
                    with pytest.raises(KeyNotFound):
                        verifier.verify(with_kid(token, f"random-{n}"))
                try:
                    accepted = verifier.verify(new_token)["sub"] == "u1"
                except KeyNotFound:
                    await asyncio.sleep(0.02)
                assert loop.time() - start < 5
            await asyncio.sleep(0.5)
            elapsed = loop.time() - start
            assert idp.requests[JWKS_PATH] - before <= elapsed / 0.3 + 1
