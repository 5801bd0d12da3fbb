"""SyncVerifier: the async core on a background thread, over real HTTP (uvicorn)."""

import asyncio

import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import free_port
from subscriber.clock import ManualClock
from subscriber.errors import KeyNotUsable
from subscriber.sync import SyncVerifier
from tests.relay.servers import Server
from tests.subscriber.conftest import AUDIENCE, eventually, issuer_app


async def test_sync_verifier_follows_the_stream_from_its_own_thread(
    redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> None:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    app = issuer_app(redis, clock, issuer=issuer)
    authority = app.state.authority
    await authority.snapshot()
    async with Server(app, port=port):
        verifier = SyncVerifier(issuer=issuer, audience=AUDIENCE, redis_url=redis_url, clock=clock,
                                registry=None, block_ms=200)  # fmt: skip
        # start() blocks its caller until bootstrapped; the issuer is served by this loop.
        await asyncio.to_thread(verifier.start)
        try:
            token = await app.state.signer.sign({"aud": AUDIENCE, "sub": "u1"})
            assert verifier.verify(token)["sub"] == "u1"
            kid = (await authority.signing_key()).kid
            await authority.revoke(kid)
            await eventually(lambda: kid in verifier.verifier.keyset.view.gone, what="revoke")
            with pytest.raises(KeyNotUsable):
                verifier.verify(token)
            assert verifier.health().state == "live"
        finally:
            await asyncio.to_thread(verifier.close)


def test_sync_verifier_refuses_shared_asyncio_clients() -> None:
    with pytest.raises(ValueError, match="cannot share an asyncio redis"):
        SyncVerifier(issuer="http://x", audience="a", redis=object())
