"""The upstream fleet end to end: the stand-in IdP and the watcher on uvicorn, a real Redis,
verifiers in upstream mode. Each test attacks one promise of the README's upstream section."""

import asyncio
import base64
import json
import random
import time

import pytest
import redis.asyncio as aioredis

from subscriber.errors import KeyNotFound
from subscriber.events import load_announcement_keys, parse_event
from subscriber.redis_keys import event_stream
from tests.watcher.conftest import eventually, fleet


async def test_a_key_published_ahead_is_in_every_verifier_within_a_poll_interval(
    redis_url: str,
) -> None:
    async with fleet(redis_url, floor_s=0.3) as f:
        verifiers = [await f.verifier() for _ in range(4)]
        assert all(v.health().state == "live" for v in verifiers)
        first = f.token()
        assert all(v.verify(first)["sub"] == "u1" for v in verifiers)

        published_at = time.time()
        kid = f.idp.publish_next()
        await eventually(
            lambda: all(kid in v.keyset.view.keys for v in verifiers), what="the new key"
        )
        seen_at = f.leader().seen_at[kid]
        held_at = [v.keyset.view.first_held[kid] for v in verifiers]
        # One poll interval (plus the poll's own round trip) from publication to the watcher;
        # from the watcher to every verifier, the push. Loose bounds: the machine is shared.
        assert seen_at - published_at <= 0.3 + 0.5
        assert max(held_at) - seen_at <= 0.5
        f.idp.switch()
        assert all(v.verify(f.token())["sub"] == "u1" for v in verifiers)


async def test_no_valid_token_is_rejected_across_ten_rotations_under_load(redis_url: str) -> None:
    async with fleet(redis_url, floor_s=0.2, hold_s=0.3) as f:
        verifiers = [await f.verifier() for _ in range(4)]
        verified = rejected = 0
        errors: list[str] = []
        stop = asyncio.Event()

        async def load(i: int) -> None:
            nonlocal verified, rejected
            while not stop.is_set():
                token = f.token()  # always the key that signs now
                try:
                    verifiers[i % 4].verify(token)
                    verified += 1
                except Exception as e:
                    rejected += 1
                    errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(load(i)) for i in range(8)]
        kids = []
        for _ in range(10):
            kid = f.idp.publish_next()  # Auth0: publish next, switch, remove the old
            kids.append(kid)
            await eventually(lambda kid=kid: all(kid in v.keyset.view.keys for v in verifiers))
            f.idp.switch()
            await asyncio.sleep(0.05)
            f.idp.remove_old()
        stop.set()
        await asyncio.gather(*tasks)
        assert rejected == 0, errors[:3]
        assert verified > 100
        # The old keys left after the hold: each verifier holds the newest key, not the first.
        await eventually(lambda: all(len(v.keyset.view.keys) <= 2 for v in verifiers))


async def test_a_provider_that_signs_at_once_costs_one_fetch_per_new_kid(redis_url: str) -> None:
    # max-age of an hour: no scheduled poll comes during the test, only hinted fetches.
    async with fleet(redis_url, max_age_s=3600, floor_s=60.0, cooldown_s=0.3) as f:
        verifiers = [await f.verifier() for _ in range(4)]
        before = f.jwks_requests()
        for _ in range(3):
            await asyncio.sleep(0.35)  # past the previous fetch's cooldown
            kid = f.idp.rotate_at_once()
            token = f.token()
            for v in verifiers:
                with pytest.raises(KeyNotFound):
                    v.verify(token)  # live and unknown: refused, and reported
            await eventually(lambda kid=kid: all(kid in v.keyset.view.keys for v in verifiers))
            assert all(v.verify(token)["sub"] == "u1" for v in verifiers)
        assert f.jwks_requests() - before == 3


async def test_ten_thousand_random_kids_cost_one_fetch_per_cooldown_and_lock_out_nothing(
    redis_url: str,
) -> None:
    cooldown_s = 0.5
    # 100 followers block in XREAD on a connection each: above redis-py's default pool of 100,
    # so this process's verifiers share a client with a larger pool.
    shared = aioredis.Redis.from_url(redis_url, max_connections=400)
    async with fleet(redis_url, max_age_s=3600, floor_s=60.0, cooldown_s=cooldown_s) as f:
        verifiers = await asyncio.gather(
            *(f.verifier(redis=shared, redis_url=None) for _ in range(100))
        )
        real = f.token()
        header, payload, signature = real.split(".")
        rng = random.Random(14)

        def forged() -> str:
            head = {"alg": "RS256", "typ": "JWT", "kid": f"{rng.getrandbits(64):016x}"}
            raw = base64.urlsafe_b64encode(json.dumps(head).encode()).rstrip(b"=").decode()
            return f"{raw}.{payload}.{signature}"

        before = f.jwks_requests()
        start = time.monotonic()
        rotated_at: float | None = None
        accepted_at: float | None = None
        for i in range(10_000):
            with pytest.raises(KeyNotFound):
                verifiers[i % 100].verify(forged())
            if i % 200 == 0:
                await asyncio.sleep(0.01)  # let hints and the watcher run, as a server would
            if i == 3_000:
                f.idp.rotate_at_once()
                rotated_at = time.monotonic()
                new_token = f.token()
            if rotated_at is not None and accepted_at is None:
                try:
                    verifiers[(i * 7) % 100].verify(new_token)
                    accepted_at = time.monotonic()
                except KeyNotFound:
                    pass
        while accepted_at is None:
            await asyncio.sleep(0.01)
            try:
                verifiers[0].verify(new_token)
                accepted_at = time.monotonic()
            except KeyNotFound:
                pass
        elapsed = time.monotonic() - start
        fetches = f.jwks_requests() - before
        assert fetches <= elapsed / cooldown_s + 1, (fetches, elapsed)
        assert rotated_at is not None
        # A real rotation waits at most one cooldown (plus the push and a little slack).
        assert accepted_at - rotated_at <= cooldown_s + 0.5
    await shared.aclose()


async def test_the_stream_holds_chained_signed_events_of_the_upstream_keys(redis_url: str) -> None:
    async with fleet(redis_url) as f:
        verifier = await f.verifier()
        kid = f.idp.publish_next()
        await eventually(lambda: kid in verifier.keyset.view.keys)
        f.idp.switch()
        f.idp.remove_old()
        await eventually(lambda: len(verifier.keyset.view.keys) == 1, what="the retirement")
        leader = f.leader()
        keys = load_announcement_keys(await leader.ledger.announcement_jwks())
        entries = await leader.redis.xrange(event_stream(f.issuer))
        events = [parse_event(fields, keys, issuer=f.issuer) for _, fields in entries]
        assert [e.type for e in events] == ["key-added", "key-added", "key-retired"]
        assert [e.version for e in events] == [1, 2, 3]
        assert all(b.prev == a.digest for a, b in zip(events, events[1:], strict=False))
        assert verifier.keyset.view.digest == events[-1].digest
