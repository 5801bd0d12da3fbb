"""Subscriber fixtures: the real issuer app in-process, and verifiers wired to it.

HTTP goes through ``httpx.ASGITransport`` wrapped in :class:`CountingTransport`, so tests can
count the requests that reach the issuer (and cut it off) at the HTTP layer.
"""

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from issuer import create_app
from issuer.settings import IssuerSettings
from subscriber.clock import ManualClock
from subscriber.constants import SNAPSHOT_PATH
from subscriber.jws import b64url_decode, b64url_encode, compact_json
from subscriber.verifier import Verifier

ISSUER = "https://issuer.test"
AUDIENCE = "orders-api"
KEK = base64.b64encode(bytes(range(32))).decode()


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts requests by path and can make the issuer unreachable."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.paths: list[str] = []
        self.down = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("issuer unreachable", request=request)
        return await self.inner.handle_async_request(request)

    def snapshot_fetches(self) -> int:
        """Requests of the signed snapshot: what every verifier resync and poll costs."""
        return self.paths.count(SNAPSHOT_PATH)


@dataclass
class Issuer:
    """The real issuer app, its authority, and an HTTP client that reaches it."""

    app: Any
    clock: ManualClock
    redis: aioredis.Redis
    transport: CountingTransport
    http: httpx.AsyncClient
    verifiers: list[Verifier] = field(default_factory=list)

    @property
    def authority(self) -> Any:
        return self.app.state.authority

    @property
    def settings(self) -> IssuerSettings:
        return self.app.state.settings  # type: ignore[no-any-return]

    async def token(self, **claims: Any) -> str:
        """A token signed by the active key."""
        return await self.app.state.signer.sign({"aud": AUDIENCE, "sub": "u1", **claims})  # type: ignore[no-any-return]

    async def advance(self, seconds: float, *, tick: bool = True) -> list[Any]:
        """What the scheduler does while ``seconds`` pass: apply the transitions now due, then
        publish a freshness record, which every connected verifier has taken when this returns.
        """
        self.clock.advance(seconds)
        applied = await self.authority.tick() if tick else []
        await self.fresh()
        return applied  # type: ignore[no-any-return]

    async def fresh(self) -> None:
        """Publish a signed freshness record and wait until connected verifiers hold it."""
        record = await self.authority.publish_freshness()

        def taken() -> bool:
            return all(
                (v.health().fresh_at or 0.0) >= record.ts
                for v in self.verifiers
                if v._liveness.connected
            )

        await eventually(taken, what="freshness record")

    def verifier(self, **options: Any) -> Verifier:
        kwargs: dict[str, Any] = dict(
            issuer=ISSUER,
            audience=AUDIENCE,
            http_client=self.http,
            clock=self.clock,
            registry=CollectorRegistry(),
            block_ms=500,
        )
        if "redis_url" not in options:
            kwargs["redis"] = self.redis
        kwargs.update(options)
        verifier = Verifier(**kwargs)
        self.verifiers.append(verifier)
        return verifier


def issuer_app(
    redis: aioredis.Redis, clock: ManualClock, issuer: str = ISSUER, **settings: Any
) -> Any:
    config = IssuerSettings(issuer=issuer, kek=KEK, admin_token="t0ken-for-tests", **settings)  # type: ignore[arg-type]
    return create_app(settings=config, redis=redis, clock=clock, run_scheduler=False)


@contextlib.asynccontextmanager
async def running_issuer(redis: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Issuer]:
    """The issuer app on ``redis``, bootstrapped; verifiers made from it are closed after."""
    app = issuer_app(redis, clock)
    transport = CountingTransport(httpx.ASGITransport(app=app))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        harness = Issuer(app=app, clock=clock, redis=redis, transport=transport, http=http)
        await harness.authority.snapshot()  # bootstrap the store: one active key
        try:
            yield harness
        finally:
            await asyncio.gather(*(v.aclose() for v in harness.verifiers))


@pytest.fixture
async def issuer(redis: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Issuer]:
    async with running_issuer(redis, clock) as harness:
        yield harness


def with_kid(token: str, kid: str) -> str:
    """``token`` with its header's ``kid`` replaced (the signature no longer matches)."""
    header, payload, signature = token.split(".")
    fields = json.loads(b64url_decode(header))
    fields["kid"] = kid
    return f"{b64url_encode(compact_json(fields))}.{payload}.{signature}"


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0, what: str = ""
) -> float:
    """Wait until ``condition`` holds (bounded); return the seconds it took."""
    start = time.perf_counter()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")
        await asyncio.sleep(0.002)
