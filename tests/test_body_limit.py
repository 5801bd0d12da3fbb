"""Request-body caps on every admin endpoint of the issuer and the relay, over real HTTP:
an oversized body is refused with 413 before it is read and before the token is checked."""

import asyncio
import json

import httpx
import pytest

from issuer.app import create_app as issuer_app
from keyherald.body_limit import BodyLimit, admin_body_max_bytes
from relay.api import create_app as relay_app
from tests.issuer.conftest import make_settings
from tests.relay.conftest import MiniIssuer, build_relay
from tests.relay.servers import Server

HUNDRED_MIB = 100 * 1024 * 1024
ENDPOINTS = {
    "issuer": [
        ("POST", "/admin/rotate"),
        ("POST", "/admin/tokens"),
        ("POST", "/admin/keys/kid1/activate"),
        ("POST", "/admin/keys/kid1/retire"),
        ("POST", "/admin/keys/kid1/revoke"),
    ],
    "relay": [
        ("POST", "/admin/partners"),
        ("POST", "/admin/partners/ptr_1/disable"),
        ("POST", "/admin/partners/ptr_1/enable"),
        ("POST", "/admin/partners/ptr_1/rotate-secret"),
        ("POST", "/admin/partners/ptr_1/replay"),
        ("DELETE", "/admin/partners/ptr_1"),
    ],
}


@pytest.fixture
async def apps(redis, clock):
    issuer = MiniIssuer(redis)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=issuer.app)) as jwks_http:
        settings = make_settings()
        yield {
            "issuer": issuer_app(settings=settings, redis=redis, clock=clock, run_scheduler=False),
            "relay": relay_app(build_relay(redis, issuer, jwks_http), "t" * 32),
        }


async def _status(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


def _head(method: str, path: str, extra: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: admin.test\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("service", "method", "path"), [(s, m, p) for s, eps in ENDPOINTS.items() for m, p in eps]
)
async def test_a_declared_oversized_body_is_refused_before_a_byte_is_read(
    apps, service, method, path
) -> None:
    async with Server(apps[service]) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # No token, and no body sent at all: the answer cannot come from reading it.
        writer.write(_head(method, path, f"Content-Length: {HUNDRED_MIB}\r\n"))
        await writer.drain()
        status, body = await asyncio.wait_for(_status(reader), 5)
        writer.close()
    assert status == 413
    assert body == {
        "detail": f"request body is larger than {admin_body_max_bytes} bytes",
        "error": "body_too_large",
    }


@pytest.mark.parametrize("service", ["issuer", "relay"])
async def test_a_chunked_body_is_cut_off_at_the_cap_before_the_token_is_checked(
    apps, service
) -> None:
    # Endpoints that take a body (the others never read one: they answer 401 at once).
    path = {"issuer": "/admin/tokens", "relay": "/admin/partners"}[service]
    async with Server(apps[service]) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_head("POST", path, "Transfer-Encoding: chunked\r\n"))
        answer = asyncio.create_task(_status(reader))
        sent, chunk = 0, b"x" * 16384
        try:
            while not answer.done() and sent < HUNDRED_MIB:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                await writer.drain()
                await asyncio.sleep(0)  # let the server read
        except ConnectionError:
            pass  # the server answered and closed: the rest of the body is not wanted
        status, body = await asyncio.wait_for(answer, 5)
        writer.close()
    assert status == 413 and body["error"] == "body_too_large"
    # Loopback socket buffers hold a few MiB at most; the 100 MiB were never needed.
    assert sent < 16 * 1024 * 1024


@pytest.mark.parametrize("service", ["issuer", "relay"])
async def test_a_body_under_the_cap_still_meets_the_token_check(apps, service) -> None:
    method, path = ENDPOINTS[service][0]
    async with Server(apps[service]) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_head(method, path, "Content-Length: 2\r\n") + b"{}")
        await writer.drain()
        status, _ = await asyncio.wait_for(_status(reader), 5)
        writer.close()
    assert status == 401


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match='"0"'):
        BodyLimit(lambda *a: None, max_bytes=0)  # type: ignore[arg-type,return-value]
