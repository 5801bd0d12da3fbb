"""Upstream fleet fixtures: the stand-in IdP and the watcher app on uvicorn (127.0.0.1), a real
Redis, and verifiers in upstream mode. Time is the system clock: these tests measure the push
path as it runs (bounds are loose; ``bench/upstream.py`` prints the figures)."""

import asyncio
import base64
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn
from prometheus_client import CollectorRegistry

from issuer.kek import Kek
from keyherald.redis_server import free_port
from keyherald.standin_idp import JWKS_PATH, StandInIdP
from subscriber.verifier import Verifier
from tests.subscriber.conftest import eventually as _eventually
from watcher.app import create_app
from watcher.ledger import UpstreamLedger
from watcher.schedule import PollPolicy
from watcher.service import UpstreamWatch
from watcher.upstream import UpstreamClient

KEK = Kek(bytes(range(32)))
KEK_B64 = base64.b64encode(bytes(range(32))).decode()
AUDIENCE = "orders-api"


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """``app`` on uvicorn at 127.0.0.1, a free port, until the block ends."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server did not start")
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start within 10 s")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Fleet:
    """The IdP, the watcher replicas (one app), and the verifiers made from them."""

    idp: StandInIdP
    issuer: str
    watcher_url: str
    watches: list[UpstreamWatch]
    redis_url: str
    verifiers: list[Verifier] = field(default_factory=list)

    def jwks_requests(self) -> int:
        return self.idp.requests[JWKS_PATH]

    def leader(self) -> UpstreamWatch:
        return next(w for w in self.watches if w.leading)

    async def verifier(self, **options: Any) -> Verifier:
        kwargs: dict[str, Any] = dict(
            issuer=self.issuer,
            audience=AUDIENCE,
            redis_url=self.redis_url,
            announcer=self.watcher_url,
            registry=CollectorRegistry(),
            block_ms=500,
            presence=False,
            miss_hint_interval_s=0.05,
        )
        kwargs.update(options)
        verifier = Verifier(**kwargs)
        self.verifiers.append(verifier)
        await verifier.start()
        return verifier

    def token(self, kid: str | None = None) -> str:
        return self.idp.mint({"sub": "u1", "aud": AUDIENCE}, kid=kid)


@contextlib.asynccontextmanager
async def fleet(
    redis_url: str,
    *,
    max_age_s: int = 0,
    floor_s: float = 0.2,
    cooldown_s: float = 0.5,
    hold_s: float = 0.3,
    replicas: int = 1,
    freshness_interval_s: float = 1.0,
    tick_s: float = 0.2,
) -> AsyncIterator[Fleet]:
    """A running IdP + watcher (``replicas`` watches of the one upstream) on ``redis_url``."""
    idp = StandInIdP(max_age_s=max_age_s)
    async with idp.serve() as issuer, httpx.AsyncClient() as http:
        # Blocking pool: a burst of requests waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=32, timeout=5)
        redis = aioredis.Redis(connection_pool=pool)
        watches = [
            UpstreamWatch(
                ledger=UpstreamLedger(
                    redis=redis,
                    issuer=issuer,
                    kek=KEK,
                    retention_s=86_400.0,
                    freshness_interval_s=freshness_interval_s,
                ),
                client=UpstreamClient(http, issuer=issuer),
                policy=PollPolicy(floor_s=floor_s, backoff_base_s=floor_s, jitter_ratio=0.0),
                hold_s=hold_s,
                cooldown_s=cooldown_s,
                lease_ttl_s=max(1.0, 5 * tick_s),
                tick_s=tick_s,
                holder=f"replica-{i}",
                rng=random.Random(i),
            )
            for i in range(replicas)
        ]
        app = create_app(watches)
        async with serve(app) as watcher_url:
            harness = Fleet(idp, issuer, watcher_url, watches, redis_url)
            await eventually(lambda: any(w.leading for w in watches), what="a leader")
            await eventually(
                lambda: harness.leader().poller.last is not None, what="the first poll"
            )
            try:
                yield harness
            finally:
                await asyncio.gather(*(v.aclose() for v in harness.verifiers))
        await redis.aclose()


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0, what: str = ""
) -> float:
    """:func:`tests.subscriber.conftest.eventually`, with the longer wait a watcher's poll
    interval needs."""
    return await _eventually(condition, timeout_s=timeout_s, what=what)
