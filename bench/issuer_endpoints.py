"""The issuer's public endpoints (JWKS, ``304``, metadata) vs a bare FastAPI app, same bytes.

Run from the repository root::

    python bench/issuer_endpoints.py            # best of 400 interleaved runs
    python bench/issuer_endpoints.py --quick    # a few seconds: checks the script runs

A private ``redis-server`` and the real issuer app with its lifespan running (so its
documents are served from memory, kept current by its stream: ``issuer/published.py``).
Contenders, each a run of requests straight into an ASGI callable (no socket, no HTTP parser:
a server adds the same cost to all of them):

- **bare**: a FastAPI app whose one route returns the issuer's JWKS bytes, with the same
  ``Cache-Control`` and ``ETag`` headers (the floor for any FastAPI app serving them);
- **jwks**: ``GET /.well-known/jwks.json`` on the issuer;
- **jwks 304**: the same with ``If-None-Match`` of the current ETag;
- **metadata**: ``GET /.well-known/openid-configuration``;
- **jwks, store read**: the JWKS with ``Cache-Control: no-cache``, which reads the store's
  head in Redis as every request did before (what keyherald's own clients send).
"""

import argparse
import asyncio
import base64
import gc
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response

from issuer import create_app
from issuer.settings import IssuerSettings
from keyherald.redis_server import RedisServer
from subscriber.constants import JWKS_PATH, METADATA_PATH
from subscriber.redis_conn import connect

ISSUER = "https://id.example.com"
Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def bare_app(body: bytes, headers: dict[str, str]) -> FastAPI:
    app = FastAPI()

    @app.get(JWKS_PATH)
    async def jwks() -> Response:
        return Response(body, media_type="application/json", headers=headers)

    return app


def scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    raw = [(b"host", b"id.example.com")] + [
        (name.lower().encode(), value.encode()) for name, value in headers.items()
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def runner(app: Asgi, request: dict[str, Any], size: int, status: int) -> Any:
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> None:
        statuses.clear()
        for _ in range(size):
            await app(dict(request), _receive, send)
        if statuses != [status] * size:
            raise RuntimeError(f"unexpected status: {sorted(set(statuses))}")

    return run


async def measure(redis_url: str, rounds: int, batch: int) -> dict[str, list[float]]:
    # The clients keyherald's own services build (retries, timeouts), as in production.
    clients = connect(redis_url)
    redis = clients.primary
    await redis.flushdb()
    kek = base64.b64encode(os.urandom(32)).decode()
    app = create_app(
        settings=IssuerSettings(issuer=ISSUER, kek=kek),  # type: ignore[arg-type]
        redis=redis,
        run_scheduler=False,
    )
    try:
        async with app.router.lifespan_context(app):
            while not app.state.published.fresh:
                await asyncio.sleep(0.01)
            document = await app.state.published.jwks()
            max_age = int(app.state.authority.policy.jwks_max_age_s)
            headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": document.etag}
            runs = {
                "bare": runner(bare_app(document.body, headers), scope(JWKS_PATH, {}), batch, 200),
                "jwks": runner(app, scope(JWKS_PATH, {}), batch, 200),
                "jwks 304": runner(
                    app, scope(JWKS_PATH, {"If-None-Match": document.etag}), batch, 304
                ),
                "metadata": runner(app, scope(METADATA_PATH, {}), batch, 200),
                "jwks, store read": runner(
                    app, scope(JWKS_PATH, {"Cache-Control": "no-cache"}), batch, 200
                ),
            }
            for run in runs.values():
                await run()
            names = list(runs)
            rates: dict[str, list[float]] = {name: [] for name in names}
            gc.collect()
            gc.disable()
            try:
                for index in range(rounds):
                    shift = index % len(names)
                    for name in names[shift:] + names[:shift]:
                        start = time.perf_counter()
                        await runs[name]()
                        rates[name].append(batch / (time.perf_counter() - start))
            finally:
                gc.enable()
            return rates
    finally:
        await clients.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, to check it runs")
    parser.add_argument("--rounds", type=int, help="runs per contender (default 400; quick 3)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 400)
    batch = 20
    logging.getLogger("issuer").setLevel(logging.ERROR)
    with RedisServer(persistence="none") as server:
        rates = asyncio.run(measure(server.url, rounds, batch))
    best = {name: max(values) for name, values in rates.items()}
    print(
        f"issuer public endpoints: best of {rounds} interleaved runs of {batch} requests "
        "through each app's ASGI callable"
    )
    targets = {"jwks": ">= 0.80 x bare", "jwks 304": ">= 1.00 x jwks"}
    print(f"{'endpoint':<18} {'requests/s':>11} {'/ bare':>7} {'/ jwks':>7}  {'target':<15} noise")
    for name, values in rates.items():
        noise = 1 - statistics.median(values) / best[name]
        print(
            f"{name:<18} {best[name]:>11,.0f} {best[name] / best['bare']:>7.2f} "
            f"{best[name] / best['jwks']:>7.2f}  {targets.get(name, '-'):<15} {noise:.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
