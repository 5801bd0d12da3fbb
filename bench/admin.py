"""Admin calls under load: concurrent rotations, and rotation cost as ended keys accumulate.

Run from the repository root::

    python bench/admin.py            # 16 concurrent rotations; 100 rotate+retire cycles
    python bench/admin.py --quick    # a smoke run

A private ``redis-server`` and the issuer app, driven through its ASGI callable with httpx:

- **rotation cost**: rotate + withdraw (``retire`` of the pending key) pairs per second on
  a fresh store, and on a store where ``--cycles`` such pairs ended that many keys (it keeps
  the newest 32 ended records): best of 15 interleaved probes of 10 pairs each; target: the
  same rate;
- **16 concurrent** ``POST /admin/rotate``: every answer's status (target: 201 or 409 with a
  reason, never 500) and rotations/s;
- **Idempotency-Key**: the same pairs with a new key on every call (each change also writes
  its authenticated record), and retries of a rotation under its key (replays) per second.
"""

import argparse
import asyncio
import base64
import collections
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import redis.asyncio as aioredis

from issuer import create_app
from issuer.settings import IssuerSettings
from keyherald.redis_server import RedisServer
from subscriber.redis_conn import connect

TOKEN = "bench-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
#: "The same rate": two probes of one store on this machine differ by up to ~5 %.
RATIO_TARGET = 0.95


def _headers(keyed: bool) -> dict[str, str]:
    return {**ADMIN, "Idempotency-Key": str(uuid.uuid4())} if keyed else ADMIN


async def cycles_per_s(http: httpx.AsyncClient, cycles: int, *, keyed: bool = False) -> float:
    start = time.perf_counter()
    for _ in range(cycles):
        added = await http.post("/admin/rotate", headers=_headers(keyed))
        kid = added.json()["events"][-1]["kid"]
        answer = await http.post(f"/admin/keys/{kid}/retire", headers=_headers(keyed))
        if answer.status_code != 200:
            raise RuntimeError(f"retire answered {answer.status_code}: {answer.text}")
    return cycles / (time.perf_counter() - start)


async def replays_per_s(http: httpx.AsyncClient, count: int) -> float:
    headers = _headers(keyed=True)
    first = await http.post("/admin/rotate", headers=headers)
    start = time.perf_counter()
    for _ in range(count):
        again = await http.post("/admin/rotate", headers=headers)
        if again.content != first.content or again.headers.get("idempotent-replayed") != "true":
            raise RuntimeError(f"not a replay: {again.status_code} {again.text}")
    return count / (time.perf_counter() - start)


@contextlib.asynccontextmanager
async def issuer_client(redis: aioredis.Redis, issuer: str) -> AsyncIterator[httpx.AsyncClient]:
    kek = base64.b64encode(os.urandom(32)).decode()
    settings = IssuerSettings(issuer=issuer, kek=kek, admin_token=TOKEN)  # type: ignore[arg-type]
    app = create_app(settings=settings, redis=redis, run_scheduler=False)
    await app.state.authority.snapshot()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=issuer) as http:
        yield http


async def rotation_cost(
    redis: aioredis.Redis, cycles: int, probe: int, rounds: int
) -> tuple[float, float, int]:
    """Best of ``rounds`` interleaved probes of ``probe`` pairs each: on a new store every time
    (at most ``probe + 2`` ended keys, after two pairs that warm the new app), and on one store
    that ended ``cycles`` keys first (the store keeps the newest 32). Interleaved, so a slow
    spell of the machine falls on both."""
    fresh: list[float] = []
    aged: list[float] = []
    async with issuer_client(redis, "https://aged.example.com") as aged_http:
        await cycles_per_s(aged_http, cycles)
        for n in range(rounds):
            async with issuer_client(redis, f"https://fresh-{n}.example.com") as http:
                await cycles_per_s(http, 2)  # a new app's first calls: not the store's cost
                fresh.append(await cycles_per_s(http, probe))
            aged.append(await cycles_per_s(aged_http, probe))
        remembered = len((await aged_http.get("/admin/keys", headers=ADMIN)).json())
    return max(fresh), max(aged), remembered


async def run(redis_url: str, concurrent: int, cycles: int, probe: int, rounds: int) -> None:
    # The clients keyherald's own services build (retries, timeouts), as in production.
    clients = connect(redis_url)
    redis = clients.primary
    await redis.flushdb()
    try:
        # Warm the interpreter's and the connection pool's first-call costs on another issuer,
        # so the first probe is not slower for them.
        async with issuer_client(redis, "https://warm-up.example.com") as http:
            await cycles_per_s(http, probe)
        # Both probes see the same live keys (one active, one pending during a pair); only the
        # number of ended records differs.
        fresh, aged, remembered = await rotation_cost(redis, cycles, probe, rounds)
        async with issuer_client(redis, "https://id.example.com") as http:
            start = time.perf_counter()
            answers = await asyncio.gather(
                *(http.post("/admin/rotate", headers=ADMIN) for _ in range(concurrent))
            )
            rate = concurrent / (time.perf_counter() - start)
            statuses = collections.Counter(a.status_code for a in answers)
            # Keyed between two unkeyed probes, so a drift over the run does not count as cost.
            pairs = 6 * probe
            before = await cycles_per_s(http, pairs)
            keyed = await cycles_per_s(http, pairs, keyed=True)
            unkeyed = (before + await cycles_per_s(http, pairs)) / 2
            replays = await replays_per_s(http, 4 * pairs)
    finally:
        await clients.aclose()
    shown = ", ".join(f"{n} x {code}" for code, n in sorted(statuses.items()))
    ok = "met" if set(statuses) <= {201, 409} else "NOT met"
    print(f"{concurrent} concurrent POST /admin/rotate: {shown} ({ok}: 201 or 409, never 500); "
          f"{rate:,.0f} rotations/s")  # fmt: skip
    ratio = aged / fresh
    met = "met" if ratio >= RATIO_TARGET else "NOT met"
    print(f"rotate+retire pairs/s: fresh store {fresh:,.1f}; after {cycles} pairs "
          f"({remembered} records kept) {aged:,.1f} (best of {rounds} interleaved probes of "
          f"{probe} pairs); ratio {ratio:.2f} "
          f"({met}: >= {RATIO_TARGET:.2f}, the same rate within the run's noise)")  # fmt: skip
    print(f"with an Idempotency-Key: rotate+retire pairs/s {keyed:,.1f} (without {unkeyed:,.1f}; "
          f"ratio {keyed / unkeyed:.2f}); replays of a rotation {replays:,.0f}/s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--cycles", type=int, default=100, help="keys the aged store ends first")
    args = parser.parse_args(argv)
    cycles, probe, rounds = (5, 3, 2) if args.quick else (args.cycles, 10, 15)
    logging.getLogger("issuer").setLevel(logging.ERROR)
    with RedisServer(persistence="none") as server:
        asyncio.run(run(server.url, 16, cycles, probe, rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
