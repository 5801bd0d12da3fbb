"""Verifiers of one process share their HTTP and Redis clients, over real HTTP (uvicorn)."""

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import free_port
from subscriber import clients
from subscriber.clock import ManualClock
from subscriber.verifier import Verifier
from tests.certs import CertificateAuthority
from tests.relay.servers import Receiver, Server
from tests.subscriber.conftest import AUDIENCE, eventually, issuer_app


@pytest.fixture
async def served(redis: aioredis.Redis, clock: ManualClock) -> AsyncIterator[tuple[Any, str]]:
    """The issuer app served on 127.0.0.1 over plain http, bootstrapped."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    app = issuer_app(redis, clock, issuer=issuer)
    await app.state.authority.snapshot()
    async with Server(app, port=port):
        yield app, issuer


def _verifier(issuer: str, redis_url: str, clock: ManualClock) -> Verifier:
    # Only URLs, as a service writes it: the clients are the library's business.
    return Verifier(issuer=issuer, audience=AUDIENCE, redis_url=redis_url, clock=clock,
                    registry=None, block_ms=200)  # fmt: skip


async def test_verifiers_of_a_loop_share_clients_and_the_last_one_closes_them(
    served: tuple[Any, str], redis_url: str, clock: ManualClock
) -> None:
    app, issuer = served
    open_before = clients.shared_count()
    first, second = _verifier(issuer, redis_url, clock), _verifier(issuer, redis_url, clock)
    await first.start()
    await second.start()
    try:
        assert first._http is second._http and first._redis is second._redis
        assert clients.shared_count() == open_before + 2
        http = first._http
        await first.aclose()
        # The survivor keeps both clients: it still follows the stream and fetches.
        kid = (await app.state.authority.rotate()).events[-1].kid
        await eventually(lambda: kid in second.keyset.view.keys, what="event after a close")
        assert await second._jwks.fetch_metadata()
        assert http is not None and not http.is_closed
    finally:
        await first.aclose()
        await second.aclose()
    assert clients.shared_count() == open_before
    assert http.is_closed


async def test_an_http_issuer_never_loads_the_ca_bundle(
    served: tuple[Any, str], redis_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    _, issuer = served
    async with _verifier(issuer, redis_url, clock) as verifier:
        assert verifier.health().state == "live"
        assert loads == []
        # The first https URL on the same shared client builds its verifying pool.
        with pytest.raises(httpx.ConnectError):
            await verifier._http.get(f"https://127.0.0.1:{free_port()}/")  # type: ignore[union-attr]
        assert len(loads) == 1


async def test_the_shared_client_verifies_https_certificates(tmp_path: Any) -> None:
    # Signed by a CA nobody trusts.
    cert, key = CertificateAuthority(tmp_path).issue("localhost", hosts=("localhost",))
    receiver = Receiver()
    async with Server(receiver, ssl_certfile=cert, ssl_keyfile=key) as server:
        client = clients.acquire_http(2.0)
        try:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://localhost:{server.port}/hook")
        finally:
            await clients.release(client)
    assert receiver.got == []


async def test_release_refuses_a_client_it_did_not_share() -> None:
    async with httpx.AsyncClient() as mine:
        with pytest.raises(ValueError, match="not shared"):
            await clients.release(mine)
    shared = clients.acquire_http(1.0)
    await clients.release(shared)
    with pytest.raises(ValueError, match="already closed"):
        await clients.release(shared)
