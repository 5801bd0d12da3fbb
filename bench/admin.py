"""Admin calls under load: concurrent rotations, and rotation cost as ended keys accumulate.

Run from the repository root::

    python bench/admin.py            # 16 concurrent rotations; 100 rotate+retire cycles
    python bench/admin.py --quick    # a smoke run

A private ``redis-server`` and the issuer app, driven through its ASGI callable with httpx:

- **16 concurrent** ``POST /admin/rotate``: every answer's status (target: 201 or 409 with a
  reason, never 500) and rotations/s;
- **rotation cost**: rotate + withdraw (``retire`` of the pending key) pairs per second with
  a fresh store, then again after ``--cycles`` such pairs have ended that many keys (the
  store forgets all but the newest 32 ended records); target: the same rate.
"""

import argparse
import asyncio
import base64
import collections
import logging
import os
import time

import httpx
import redis.asyncio as aioredis

from issuer import create_app
from issuer.settings import IssuerSettings
from keyherald.redis_server import RedisServer

TOKEN = "bench-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def cycles_per_s(http: httpx.AsyncClient, cycles: int) -> float:
    start = time.perf_counter()
    for _ in range(cycles):
        kid = (await http.post("/admin/rotate", headers=ADMIN)).json()["events"][-1]["kid"]
        answer = await http.post(f"/admin/keys/{kid}/retire", headers=ADMIN)
        if answer.status_code != 200:
            raise RuntimeError(f"retire answered {answer.status_code}: {answer.text}")
    return cycles / (time.perf_counter() - start)


async def run(redis_url: str, concurrent: int, cycles: int, probe: int) -> None:
    redis = aioredis.from_url(redis_url)
    await redis.flushdb()
    kek = base64.b64encode(os.urandom(32)).decode()
    settings = IssuerSettings(issuer="https://id.example.com", kek=kek, admin_token=TOKEN)  # type: ignore[arg-type]
    app = create_app(settings=settings, redis=redis, run_scheduler=False)
    await app.state.authority.snapshot()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        base = "https://id.example.com"
        async with httpx.AsyncClient(transport=transport, base_url=base) as http:
            fresh = await cycles_per_s(http, probe)
            start = time.perf_counter()
            answers = await asyncio.gather(
                *(http.post("/admin/rotate", headers=ADMIN) for _ in range(concurrent))
            )
            rate = concurrent / (time.perf_counter() - start)
            statuses = collections.Counter(a.status_code for a in answers)
            await cycles_per_s(http, cycles)
            aged = await cycles_per_s(http, probe)
            remembered = len(await app.state.authority.keys())
    finally:
        await redis.aclose()
    shown = ", ".join(f"{n} x {code}" for code, n in sorted(statuses.items()))
    ok = "met" if set(statuses) <= {201, 409} else "NOT met"
    print(f"{concurrent} concurrent POST /admin/rotate: {shown} ({ok}: 201 or 409, never 500); "
          f"{rate:,.0f} rotations/s")  # fmt: skip
    print(f"rotate+retire pairs/s: fresh store {fresh:,.1f}; after {cycles} more pairs "
          f"({remembered} records kept) {aged:,.1f}; ratio {aged / fresh:.2f} "
          "(target ~1.00)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--cycles", type=int, default=100, help="pairs between the two probes")
    args = parser.parse_args(argv)
    cycles, probe = (5, 3) if args.quick else (args.cycles, 30)
    logging.getLogger("issuer").setLevel(logging.ERROR)
    with RedisServer(persistence="none") as server:
        asyncio.run(run(server.url, 16, cycles, probe))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
