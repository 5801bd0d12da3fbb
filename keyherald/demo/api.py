"""``keyherald demo api``: a verifying service, written the way a consumer team would write one.

A FastAPI app whose ``GET /orders`` needs a bearer token, verified by the subscriber library's
:class:`~subscriber.Verifier` through its FastAPI dependency (key cache kept warm by the
issuer's stream; heartbeats on, so ``keyherald status`` and the demo see which keys it holds).
``GET /healthz`` answers 200 while the verifier is live or degraded, 503 once it is stale.
"""

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Response

from subscriber import Verifier
from subscriber.fastapi import bearer_claims

from .settings import DemoSettings

logger = logging.getLogger(__name__)


def create_app(settings: DemoSettings, name: str) -> FastAPI:
    """The service; its verifier starts and stops with the app."""
    heartbeat_s = settings.demo_heartbeat_s
    verifier = Verifier(
        issuer=settings.issuer,
        audience=settings.demo_audience,
        redis_url=settings.redis_url,
        service=name,
        heartbeat_interval_s=heartbeat_s,
        heartbeat_ttl_s=max(3 * heartbeat_s, 2.0),
        announcer=settings.demo_announcer or None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with verifier:
            logger.info("%s verifying tokens of %s", name, settings.issuer)
            yield

    app = FastAPI(title=f"keyherald demo api ({name})", lifespan=lifespan)
    require_claims = bearer_claims(verifier)

    @app.get("/orders")
    async def orders(claims: Annotated[dict[str, Any], Depends(require_claims)]) -> dict[str, Any]:
        return {"service": name, "sub": claims.get("sub"), "orders": [{"id": 1, "total": 42}]}

    @app.get("/healthz")
    async def healthz(response: Response) -> dict[str, Any]:
        health = verifier.health()
        if health.state == "stale":
            response.status_code = 503
        return {"state": health.state, "version": health.version, "kids": dict(health.kids)}

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    parser.add_argument("--name", default="api", help="service name in heartbeats (default api)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    # One log line per request would bury everything else in the demo's logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(DemoSettings.load(), args.name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
