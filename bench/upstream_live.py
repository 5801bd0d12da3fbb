"""The measured half of ``bench/upstream.py``: an upstream rotation on the wall clock, from the
IdP publishing a key to every verifier holding it.

A private redis-server, the stand-in IdP on uvicorn (127.0.0.1) and ``--verifiers`` verifiers
in upstream mode in this process (each follows the stream over its own Redis connection, as
services do); ``keyherald watch`` as its own process, configured through its environment.
Two runs, each with a fresh IdP, watcher and verifiers:

- **lead** (Auth0): JWKS ``max-age`` ``--live-max-age`` s; each rotation publishes the next
  key at a random phase of the watcher's schedule, waits until every verifier holds it,
  switches, removes the old key. Verifiers verify the IdP's current token all along (load);
- **at once**: ``max-age`` one hour (no scheduled poll during the run), watcher cooldown
  0.5 s; each rotation publishes a key that signs at once and presents its first token to
  every verifier: each refuses it (live, unknown kid: no network on the request path) and
  writes a miss hint; the watcher fetches once and announces. Beside it, ``--verifiers``
  PyJWKClients at their defaults, warm for each rotation with their last fetch 31 s old
  (past their 30 s cooldown, as when rotations are far apart), fetch on the request path.
"""

import asyncio
import base64
import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
from jwt import PyJWKClient
from prometheus_client import CollectorRegistry

from keyherald.observe import EventTail
from keyherald.redis_server import RedisServer, free_port
from keyherald.standin_idp import JWKS_PATH, StandInIdP
from subscriber.constants import METADATA_PATH, UPSTREAMS_PATH
from subscriber.errors import KeyNotFound
from subscriber.redis_keys import issuer_tag
from subscriber.verifier import Verifier

AUDIENCE = "api"
COOLDOWN_S = 0.5
TICK_S = 0.2


@dataclass
class Live:
    """What one run measured (seconds unless the name says otherwise)."""

    #: publication -> the watcher's key-added commit (its poll, or its hinted fetch)
    poll_s: list[float] = field(default_factory=list)
    #: the watcher's commit -> the last verifier holding the key
    push_ms: list[float] = field(default_factory=list)
    #: publication -> the last verifier holding the key
    total_s: list[float] = field(default_factory=list)
    #: upstream JWKS requests per new kid (at once)
    fetches: list[int] = field(default_factory=list)
    verified: int = 0
    refused: int = 0
    #: PyJWKClient (at once): JWKS requests per new kid, and each request-path fetch's time
    pyjwt_fetches: list[int] = field(default_factory=list)
    pyjwt_ms: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def watch_process(redis_url: str, upstream: str, **settings: Any) -> AsyncIterator[str]:
    """``keyherald watch`` for ``upstream``, ready once it has announced the IdP's keys."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
    env |= {
        "KEYHERALD_WATCH_UPSTREAMS": upstream,
        "KEYHERALD_WATCH_KEK": base64.b64encode(os.urandom(32)).decode(),
        "KEYHERALD_WATCH_ALLOW_HTTP": "1",
        "KEYHERALD_WATCH_REDIS_URL": redis_url,
        "KEYHERALD_WATCH_TICK_INTERVAL_S": str(TICK_S),
    }
    env |= {f"KEYHERALD_WATCH_{k.upper()}": str(v) for k, v in settings.items()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyherald.cli", "--log-level", "WARNING", "watch",
        "--port", str(port), env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError, KeyError, IndexError, ValueError):
                    if (await http.get(url + "/healthz")).json()["upstreams"][0]["keys"]:
                        break
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("keyherald watch did not announce the IdP's key in 30 s")
                await asyncio.sleep(0.05)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _tail(redis: aioredis.Redis, watcher: str, issuer: str) -> EventTail:
    url = f"{watcher}{UPSTREAMS_PATH}/{issuer_tag(issuer)}{METADATA_PATH}"
    async with httpx.AsyncClient() as http:
        meta = (await http.get(url)).json()
    return EventTail(redis, issuer, meta["keyherald"]["announcement_keys"])


async def _committed_at(tail: EventTail, kid: str, seen: dict[str, float]) -> float:
    deadline = time.monotonic() + 10
    while kid not in seen:
        for event in await tail.poll(block_ms=100):
            if event.type == "key-added":
                seen[event.kid] = event.ts
        if time.monotonic() > deadline:
            raise RuntimeError(f"no key-added event for {kid}")
    return seen[kid]


async def _all_hold(verifiers: list[Verifier], kid: str, timeout_s: float = 30.0) -> float:
    deadline = time.monotonic() + timeout_s
    while not all(kid in v.keyset.view.keys for v in verifiers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the verifiers did not get {kid} in {timeout_s} s")
        await asyncio.sleep(0.001)
    return max(v.keyset.view.first_held[kid] for v in verifiers)


@contextlib.asynccontextmanager
async def _fleet(
    redis_url: str, idp: StandInIdP, n: int, **watch: Any
) -> AsyncIterator[tuple[list[Verifier], EventTail]]:
    async with idp.serve() as issuer, watch_process(redis_url, issuer, **watch) as watcher:
        verifiers = [
            Verifier(
                issuer=issuer,
                audience=AUDIENCE,
                redis_url=redis_url,
                announcer=watcher,
                registry=CollectorRegistry(),
                presence=False,
                miss_hint_interval_s=0.2,
            )  # fmt: skip
            for _ in range(n)
        ]
        await asyncio.gather(*(v.start() for v in verifiers))
        # The bench's own observer of the plain server it started, not a client under test.
        redis = aioredis.Redis.from_url(redis_url)
        try:
            yield verifiers, await _tail(redis, watcher, issuer)
        finally:
            await asyncio.gather(*(v.aclose() for v in verifiers))
            await redis.aclose()


async def lead(redis_url: str, n: int, rotations: int, max_age_s: int) -> Live:
    out, seen = Live(), {}
    idp = StandInIdP(alg="ES256", max_age_s=max_age_s)
    rng = random.Random(14)
    async with _fleet(redis_url, idp, n, poll_floor_s=0.5, retire_hold_s=0.3) as (verifiers, tail):
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            while not stop.is_set():
                try:
                    verifiers[i % n].verify(idp.mint({"aud": AUDIENCE}))
                    out.verified += 1
                except Exception:
                    out.refused += 1
                i += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(load())
        for _ in range(rotations):
            await asyncio.sleep(rng.uniform(0, max_age_s))  # any phase of the poll schedule
            kid = idp.publish_next()
            published = time.time()
            held = await _all_hold(verifiers, kid)
            committed = await _committed_at(tail, kid, seen)
            out.poll_s.append(committed - published)
            out.push_ms.append((held - committed) * 1000)
            out.total_s.append(held - published)
            idp.switch()
            await asyncio.sleep(0.05)
            idp.remove_old()
        stop.set()
        await task
    return out


def _pyjwt_warm(url: str, n: int) -> list[PyJWKClient]:
    clients = [PyJWKClient(url + JWKS_PATH) for _ in range(n)]
    for client in clients:
        client.get_signing_keys()  # warm, as a running service is
        # As if that fetch were 31 s old: past PyJWT's 30 s unknown-kid cooldown, inside its
        # 300 s cache lifespan (rotations are months apart, services are not restarted).
        client._last_successful_fetch = time.monotonic() - 31
    return clients


def _pyjwt_fetch(clients: list[PyJWKClient], token: str, out: Live, idp: StandInIdP) -> None:
    before = idp.requests[JWKS_PATH]
    for client in clients:
        started = time.perf_counter()
        client.get_signing_key_from_jwt(token)  # unknown kid: fetches on the request path
        out.pyjwt_ms.append((time.perf_counter() - started) * 1000)
    out.pyjwt_fetches.append(idp.requests[JWKS_PATH] - before)


async def at_once(redis_url: str, n: int, rotations: int) -> Live:
    out, seen = Live(), {}
    idp = StandInIdP(alg="ES256", max_age_s=3600)
    watch = {"poll_floor_s": 60, "cooldown_s": COOLDOWN_S}
    async with _fleet(redis_url, idp, n, **watch) as (verifiers, tail):
        for _ in range(rotations):
            await asyncio.sleep(COOLDOWN_S + 0.1)  # past the last fetch's cooldown
            clients = await asyncio.to_thread(_pyjwt_warm, idp.issuer or "", n)
            before = idp.requests[JWKS_PATH]
            kid = idp.rotate_at_once()
            published = time.time()
            token = idp.mint({"aud": AUDIENCE})
            for verifier in verifiers:
                with contextlib.suppress(KeyNotFound):
                    verifier.verify(token)
                    out.verified += 1
                    continue
                out.refused += 1
            held = await _all_hold(verifiers, kid)
            committed = await _committed_at(tail, kid, seen)
            await asyncio.sleep(0.2)  # any further fetch for this kid would show by now
            out.fetches.append(idp.requests[JWKS_PATH] - before)
            out.poll_s.append(committed - published)
            out.push_ms.append((held - committed) * 1000)
            out.total_s.append(held - published)
            await asyncio.to_thread(_pyjwt_fetch, clients, token, out, idp)
    return out


async def measure(n: int, rotations: int, max_age_s: int) -> tuple[Live, Live]:
    """Both runs on one private Redis (flushed between them)."""
    with RedisServer(persistence="none") as server:
        first = await lead(server.url, n, rotations, max_age_s)
        client = aioredis.Redis.from_url(server.url)
        await client.flushdb()
        await client.aclose()
        second = await at_once(server.url, n, rotations)
    return first, second


def spread(values: list[float], fmt: str = ".0f") -> str:
    """``min-max (median m)``."""
    if not values:
        return "-"
    return f"{min(values):{fmt}}-{max(values):{fmt}} (median {statistics.median(values):{fmt}})"
