"""Cache-Control parsing and the poll schedule (pure), conditional fetches (real issuer), and
one retry when a connection is dropped under a request (a real server on 127.0.0.1)."""

import asyncio
import random

import httpx
import pytest

from subscriber.errors import FetchError
from subscriber.jwks_client import JwksClient, parse_max_age, poll_delay_s
from tests.subscriber.conftest import ISSUER, Issuer


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=900", 900.0),
        ("max-age=60", 60.0),
        ('public, max-age="30"', 30.0),
        ("no-cache", 0.0),
        ("public, s-maxage=10", None),
        (None, None),
    ],
)
def test_parse_max_age(header: str | None, seconds: float | None) -> None:
    assert parse_max_age(header) == seconds


def test_poll_delay_follows_max_age_clamped_with_jitter_that_only_shortens() -> None:
    rng = random.Random(3)
    delays = [poll_delay_s(900.0, rng, min_s=5.0, max_s=300.0) for _ in range(1000)]
    assert 240.0 <= min(delays) and max(delays) <= 300.0 and len(set(delays)) > 900
    assert poll_delay_s(0.0, rng, min_s=5.0, max_s=300.0) <= 5.0
    assert 40.0 <= poll_delay_s(50.0, rng, min_s=5.0, max_s=300.0) <= 50.0


async def test_conditional_fetch_gets_304_until_the_key_set_changes(issuer: Issuer) -> None:
    client = JwksClient(issuer.http, ISSUER)
    first = await client.fetch_jwks()
    again = await client.fetch_jwks()
    assert (first.not_modified, again.not_modified) == (False, True)
    assert again.doc == first.doc and first.max_age_s == issuer.settings.jwks_max_age_s
    await issuer.authority.rotate()
    changed = await client.fetch_jwks()
    assert not changed.not_modified
    assert changed.doc["keyherald"]["version"] > first.doc["keyherald"]["version"]


async def test_metadata_for_another_issuer_is_refused(issuer: Issuer) -> None:
    with pytest.raises(FetchError, match="is for issuer"):
        await JwksClient(issuer.http, ISSUER + "/").fetch_metadata()  # not exactly iss


class DroppingServer:
    """An HTTP/1.1 server on 127.0.0.1 that closes the first ``drops`` connections as soon as
    a request arrives, without answering, then serves a JWKS."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if self.connections <= self.drops:
                    return  # hang up on the request
                body = b'{"keys":[]}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/jwks.json"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_connection_dropped_under_the_request_is_retried_once() -> None:
    server = DroppingServer(drops=1)
    async with server as url, httpx.AsyncClient() as http:
        response = await JwksClient(http, ISSUER, jwks_url=url).fetch_jwks()
    assert response.doc == {"keys": []}
    assert server.connections == 2


async def test_an_issuer_that_keeps_dropping_costs_two_attempts_then_fails() -> None:
    server = DroppingServer(drops=10)
    async with server as url, httpx.AsyncClient() as http:
        with pytest.raises(FetchError, match="RemoteProtocolError"):
            await JwksClient(http, ISSUER, jwks_url=url).fetch_jwks()
    assert server.connections == 2
