"""Every component on one Redis topology, under load, while the test breaks the primary.

The real issuer app (scheduler on, admin API over ASGI with exceptions turned into 500s, so
that a 500 is seen and not raised), three verifiers (two reading the stream from replicas),
a relay delivering to a real partner endpoint on 127.0.0.1, and two loops: one mints and
verifies tokens with every verifier, one rotates keys through the admin API.
"""

import asyncio
import base64
import contextlib
import gc
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from issuer.app import create_app
from issuer.settings import IssuerSettings
from relay.egress import EgressPolicy
from relay.keysource import SnapshotKeySource
from relay.metrics import RelayMetrics
from relay.service import Relay
from subscriber import InvalidToken, Verifier
from subscriber.events import load_announcement_keys
from subscriber.jwks_client import JwksClient
from subscriber.redis_conn import RedisClients, connect
from subscriber.redis_keys import event_stream
from tests.relay.conftest import make_policy
from tests.relay.servers import Receiver, Server

logger = logging.getLogger(__name__)

ISSUER = "http://issuer.ha.test"
ADMIN = {"Authorization": "Bearer ha-admin-token-0123456789"}
AUDIENCE = "orders-api"
#: The lead outlasts a failover plus a verifier's reconnect backoff, as 6 days do in production.
LEAD_S = 6.0


@dataclass
class Tally:
    minted: int = 0
    verified: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    admin: Counter[int] = field(default_factory=Counter)
    rotations: int = 0
    errors: list[str] = field(default_factory=list)
    ambiguous: int = 0
    lost_writes: bool = False


def settings(url: str, **overrides: Any) -> IssuerSettings:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "kek": base64.b64encode(bytes(range(32))).decode(),
        "admin_token": ADMIN["Authorization"].removeprefix("Bearer "),
        "redis_url": url,
        "rotation_period_s": 3_600.0,
        "lead_s": LEAD_S,
        "retire_grace_s": 4.0,
        "max_token_ttl_s": 2.0,
        "jwks_max_age_s": 1.0,
        "clock_skew_s": 0.5,
        "tick_interval_s": 0.2,
        "lease_ttl_s": 2.0,
        "redis_timeout_s": 2.0,
        "dev_http_issuer": True,
    }
    values.update(overrides)
    return IssuerSettings(**values)


class _LostEntries(logging.Handler):
    """Counts followers that saw the stream's head go backwards: writes a failover lost."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "lost entries" in record.getMessage():
            self.count += 1


class Harness:
    def __init__(self, url: str, replica_url: str, **issuer_settings: Any) -> None:
        self.settings = settings(url, **issuer_settings)
        self.url, self.replica_url = url, replica_url
        self.app = create_app(settings=self.settings)
        self.app.add_exception_handler(Exception, self._unexpected)
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.http = httpx.AsyncClient(transport=transport, base_url=ISSUER, timeout=30)
        self.tally = Tally()
        self.receiver = Receiver()
        self.verifiers: list[Verifier] = []
        self._stack = contextlib.AsyncExitStack()

    async def _unexpected(self, request: Any, exc: Exception) -> Any:
        from fastapi.responses import PlainTextResponse

        self.tally.errors.append(f"{request.url.path}: {type(exc).__module__}.{exc!r}")
        return PlainTextResponse(f"{type(exc).__name__}: {exc}", status_code=500)

    async def __aenter__(self) -> "Harness":
        stack = self._stack
        self.lost = _LostEntries()
        follower_log = logging.getLogger("subscriber.follower")
        follower_log.addHandler(self.lost)
        stack.callback(follower_log.removeHandler, self.lost)
        await stack.enter_async_context(self.app.router.lifespan_context(self.app))
        stack.push_async_callback(self.http.aclose)
        for url in (self.url, self.replica_url, self.replica_url):
            verifier = Verifier(
                issuer=ISSUER,
                audience=AUDIENCE,
                redis_url=url,
                http_client=self.http,
                registry=CollectorRegistry(),
                block_ms=500,
                heartbeat_interval_s=0.5,
                heartbeat_ttl_s=5.0,
                min_poll_interval_s=1.0,
            )
            await stack.enter_async_context(verifier)
            self.verifiers.append(verifier)
        server = await stack.enter_async_context(Server(self.receiver))
        self.relay_redis: RedisClients = connect(self.url)
        stack.push_async_callback(self.relay_redis.aclose)
        jwks = await self.app.state.authority.announcement_jwks()
        announce = dict(load_announcement_keys(jwks))
        keys = SnapshotKeySource(JwksClient(self.http, ISSUER), ISSUER, announce)
        self.relay = Relay(
            self.relay_redis.primary,
            ISSUER,
            announce,
            keys,
            policy=make_policy(),
            egress_policy=EgressPolicy.from_strings(["127.0.0.1"]),
            consumer="relay-ha",
            block_ms=200,
            idle_before_claim_s=5.0,
            metrics=RelayMetrics(),
        )
        _, secret = await self.relay.partners.register(server.url)
        self.receiver.secrets.append(secret)
        stack.push_async_callback(_drain)
        await stack.enter_async_context(self.relay)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        # redis-py drops, without closing, its connections to a primary that died under it
        # (kill -9) once Sentinel names another; collect them here, inside the test, where the
        # HA tests' filterwarnings mark applies, not at interpreter exit.
        gc.collect()

    # -- the two loops -------------------------------------------------------------------------

    async def poll_admin(self, stop: asyncio.Event) -> None:
        """Read the plan every 50 ms: through a failover the answer is 200 or 503, never 500."""
        while not stop.is_set():
            response = await self.http.get("/admin/plan", headers=ADMIN)
            self.tally.admin[response.status_code] += 1
            if response.status_code == 503:
                assert response.headers.get("Retry-After"), "a 503 without Retry-After"
            await asyncio.sleep(0.05)

    async def load(self, stop: asyncio.Event) -> None:
        """Mint a token every 20 ms and verify it with every verifier."""
        signer = self.app.state.signer
        while not stop.is_set():
            try:
                minted = await signer.mint({"sub": "u", "aud": AUDIENCE}, ttl_s=2)
            except Exception as e:  # a failing primary: no token, nothing to verify
                logger.info("mint failed: %s", type(e).__name__)
                await asyncio.sleep(0.05)
                continue
            self.tally.minted += 1
            for verifier in self.verifiers:
                try:
                    verifier.verify(minted.token)
                    self.tally.verified += 1
                except InvalidToken as e:
                    self.tally.rejected.append((e.reason, minted.kid))
            await asyncio.sleep(0.02)

    async def admin(self, method: str, path: str) -> httpx.Response:
        """An admin call, retried for up to 60 s while it answers 503 (statuses are tallied)."""
        for _ in range(240):
            response = await self.http.request(method, path, headers=ADMIN)
            self.tally.admin[response.status_code] += 1
            if response.status_code != 503:
                return response
            assert response.headers.get("Retry-After"), "a 503 without Retry-After"
            await asyncio.sleep(float(response.headers["Retry-After"]) / 4)
        raise AssertionError(f"{method} {path}: still 503 after 60 s")

    async def rotate_once(self) -> None:
        """Publish a key, wait the lead, activate it."""
        added = await self.admin("POST", "/admin/rotate")
        if added.status_code == 409 and "already exists" in added.text:
            # The write landed but its reply was lost to the failover; redis-py resent it, and
            # the authority's compare-and-set refused the copy. The key is there: go on.
            kid = added.json()["detail"].split("'")[1]
            self.tally.ambiguous += 1
        else:
            assert added.status_code == 201, added.text
            kid = added.json()["events"][0]["kid"]
        await asyncio.sleep(LEAD_S + 0.1)
        activated = await self.admin("POST", f"/admin/keys/{kid}/activate")
        # 409: the scheduler activated it first (or a request whose answer a failover lost).
        assert activated.status_code in (200, 409), activated.text
        self.tally.rotations += 1

    async def stream_versions(self) -> list[int]:
        clients = connect(self.url)
        try:
            entries = await clients.primary.xrange(event_stream(ISSUER))
        finally:
            await clients.aclose()
        return [int(fields[b"version"]) for _id, fields in entries]


async def _drain() -> None:
    # The relay's shielded lease release can outlive Relay.aclose(); let it finish before its
    # Redis clients close, or it opens a connection on a closed pool (a ResourceWarning).
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=2.0)


@contextlib.asynccontextmanager
async def running(harness: Harness) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(harness.load(stop)), asyncio.create_task(harness.poll_admin(stop))]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.05)
