"""Lifecycle properties end to end: real Redis, real keys, the JWKS bytes the issuer serves.

A token signed at time t must verify (PyJWT, an independent implementation) against every
JWKS the issuer serves from t until the token's ``exp``; exactly one key is active at every
instant; no key signs before it has been published for the lead; the stream tells the same
story as the store.
"""

import asyncio

import jwt
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer.authority import Authority
from issuer.errors import IllegalTransition
from issuer.kek import Kek
from issuer.signer import Signer
from subscriber.clock import ManualClock
from tests.issuer.conftest import ISSUER, KEK_BYTES, make_settings
from tests.issuer.helpers import replay, states, stream_events

# Seconds, so that hypothesis steps cross every stage: 100 s keys, 20 s lead, 30 s grace.
DEMO = {"rotation_period_s": 100, "lead_s": 20, "retire_grace_s": 30, "max_token_ttl_s": 10,
        "jwks_max_age_s": 5, "clock_skew_s": 1}  # fmt: skip
ALGS = ("ES256", "EdDSA")  # RS256 is covered elsewhere; its keygen would slow every example


async def _mint(authority: Authority, signer: Signer, bootstrap_kid: str) -> tuple[str, int, str]:
    """Sign a token now, checking the one-active-key and publish-before-sign properties."""
    keys = await authority.keys()
    assert [k.state for k in keys].count("active") == 1
    minted = await signer.mint({"sub": "s"})
    key = next(k for k in keys if k.kid == minted.kid)
    assert key.state == "active"
    if minted.kid != bootstrap_kid:
        assert authority.clock() >= key.created_at + DEMO["lead_s"]
    return minted.token, minted.exp, minted.kid


async def _life(redis_url: str, alg: str, steps: list[tuple[int, str]]) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    clock = ManualClock()
    policy = make_settings(algorithm=alg, **DEMO).policy()
    authority = Authority(redis=client, issuer=ISSUER, policy=policy, kek=Kek(KEK_BYTES),
                          clock=clock)  # fmt: skip
    signer = Signer(authority)
    tokens: list[tuple[str, int, str]] = []  # (token, exp, kid)
    bootstrap_kid = (await authority.keys())[0].kid
    try:
        for advance_s, action in steps:
            clock.advance(advance_s)
            # Mint just before and after the scheduler's round: a token signed an instant
            # before its key stops signing must still verify until it expires.
            tokens.append(await _mint(authority, signer, bootstrap_kid))
            await authority.tick()
            tokens.append(await _mint(authority, signer, bootstrap_kid))
            if action == "rotate":
                await authority.rotate()
            elif action == "activate":
                pending = [k.kid for k in await authority.keys() if k.state == "pending"]
                try:
                    await authority.activate(pending[0]) if pending else None
                except IllegalTransition:
                    pass  # still inside its lead: refusing is the property
            tokens.append(await _mint(authority, signer, bootstrap_kid))
            records = {k.kid: k for k in await authority.keys()}
            for _, exp, kid in tokens:  # a key leaves the JWKS only after its tokens expire
                record = records[kid]
                if record.state != "active":  # scheduled (retire_at) or done (ended_at)
                    assert (record.ended_at or record.retire_at or 0) >= exp
            # The served bytes themselves (test_app covers the HTTP route around them).
            jwks = jwt.PyJWKSet.from_dict((await authority.jwks()).json())
            for token, exp, kid in tokens:
                if clock() <= exp:
                    # PyJWT would check exp against the wall clock; the clock here is ours.
                    jwt.decode(token, jwks[kid].key, algorithms=[alg],
                               options={"verify_exp": False, "verify_iat": False,
                                        "verify_nbf": False})  # fmt: skip
        events = await stream_events(client, authority)
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        assert replay(events) == states(await authority.keys())
    finally:
        await client.flushdb()
        await client.aclose()


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    alg=st.sampled_from(ALGS),
    steps=st.lists(
        # Short steps land inside token lifetimes and grace periods, long ones cross stages.
        st.tuples(
            st.one_of(st.integers(0, 12), st.integers(0, 60)),
            st.sampled_from(["wait", "rotate", "activate"]),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_tokens_verify_against_every_jwks_until_exp(
    redis_url: str, alg: str, steps: list[tuple[int, str]]
) -> None:
    asyncio.run(_life(redis_url, alg, steps))
