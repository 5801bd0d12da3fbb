"""A FastAPI endpoint guarded by ``subscriber.fastapi`` vs the same endpoint guarded by PyJWT.

Run from the repository root::

    python bench/fastapi_endpoint.py            # ES256, best of 400 interleaved runs
    python bench/fastapi_endpoint.py --alg RS256
    python bench/fastapi_endpoint.py --quick    # a few seconds: checks the script runs

The real system in-process (a private ``redis-server``, the issuer app, a started
:class:`~subscriber.Verifier`), and four FastAPI apps with the same ``GET /orders`` endpoint
returning ``{"sub": ...}``:

- **bare**: no authentication at all (the framework's floor);
- **keyherald**: ``Depends(bearer_claims(verifier))``, the verifier's token cache off, so
  every request pays the signature check (a new token each time);
- **keyherald cached**: the same with the default token cache, on tokens seen before (a
  client sending its token again, the common case);
- **PyJWT**: a dependency that reads the bearer header the same way, picks the key by the
  token's ``kid`` (``jwt.get_unverified_header``, as ``PyJWKClient`` does) from keys loaded
  beforehand, and calls ``jwt.decode`` with the same claim checks.

Requests go straight into each app's ASGI callable (no socket, no HTTP parser), so what is
measured is the framework plus the dependency: a server adds the same cost to every
contender. Runs are short and interleaved with rotating order; the best run of each is
reported, and "noise" says how far the median run fell below it.
"""

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request

sys.path.insert(0, str(Path(__file__).resolve().parent))

from verify import AUDIENCE, ISSUER, live_subject

from keyherald.redis_server import RedisServer
from subscriber.fastapi import bearer_claims, bearer_token

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/orders")
    async def orders() -> dict[str, Any]:
        return {"sub": "anonymous"}

    return app


def keyherald_app(verifier: Any) -> FastAPI:
    app = FastAPI()
    require = bearer_claims(verifier)

    @app.get("/orders")
    async def orders(claims: Annotated[dict[str, Any], Depends(require)]) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    return app


def pyjwt_app(keys: dict[str, Any], alg: str) -> FastAPI:
    app = FastAPI()
    options = {"require": ["exp", "iss", "aud"]}

    async def require(request: Request) -> dict[str, Any]:
        token = bearer_token(request)
        if token is None:
            raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"})
        try:
            key = keys[jwt.get_unverified_header(token)["kid"]]
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=30,
                options=options,  # type: ignore[arg-type]
            )
        except (jwt.InvalidTokenError, KeyError):
            raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"}) from None
        return claims

    @app.get("/orders")
    async def orders(claims: Annotated[dict[str, Any], Depends(require)]) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    return app


def scope(token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"orders.test"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def runner(app: Asgi, tokens: list[str]) -> Callable[[], Awaitable[None]]:
    scopes = [scope(token) for token in tokens]
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> None:
        statuses.clear()
        for each in scopes:
            await app(each, _receive, send)
        if statuses != [200] * len(scopes):
            raise RuntimeError(f"a request was refused: {sorted(set(statuses))}")

    return run


async def measure(alg: str, count: int, rounds: int, batch: int, redis_url: str) -> None:
    async with live_subject(alg, count, redis_url) as subject:
        keys = {kid: key.key for kid, key in subject.verifier.keyset.view.keys.items()}
        apps: dict[str, Asgi] = {
            "bare": bare_app(),
            "keyherald": keyherald_app(subject.uncached),
            "keyherald cached": keyherald_app(subject.cached),
            "PyJWT": pyjwt_app(keys, alg),
        }
        batches = [subject.tokens[i : i + batch] for i in range(0, count, batch)]
        runs = [{name: runner(app, b) for name, app in apps.items()} for b in batches]
        for per_batch in runs:  # every request must succeed (and warms the token cache)
            for run in per_batch.values():
                await run()
        names = list(apps)
        rates: dict[str, list[float]] = {name: [] for name in names}
        gc.collect()
        gc.disable()
        try:
            for index in range(rounds):
                per_batch = runs[index % len(runs)]
                size = len(batches[index % len(runs)])
                shift = index % len(names)
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    await per_batch[name]()
                    rates[name].append(size / (time.perf_counter() - start))
        finally:
            gc.enable()
    best = {name: max(values) for name, values in rates.items()}
    print(f"{'endpoint':<18} {'requests/s':>11} {'/ PyJWT':>8} {'/ bare':>7}  noise")
    for name in names:
        noise = 1 - statistics.median(rates[name]) / best[name]
        print(
            f"{name:<18} {best[name]:>11,.0f} {best[name] / best['PyJWT']:>8.2f} "
            f"{best[name] / best['bare']:>7.2f}  {noise:.0%}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alg", default="ES256", help="signing algorithm (default ES256)")
    parser.add_argument("--quick", action="store_true", help="a few seconds, to check it runs")
    parser.add_argument("--rounds", type=int, help="runs per endpoint (default 400; quick 3)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 400)
    batch, count = 20, 20 if args.quick else 200
    import logging

    logging.getLogger("issuer").setLevel(logging.ERROR)
    print(
        f"FastAPI endpoint benchmark: {args.alg}, {count} distinct tokens, best of {rounds} "
        f"interleaved runs of {batch} requests through each app's ASGI callable"
    )
    with RedisServer(persistence="none") as server:
        asyncio.run(measure(args.alg, count, rounds, batch, server.url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
