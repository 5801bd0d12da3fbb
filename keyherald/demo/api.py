"""``keyherald demo api``: a verifying service, written the way a consumer team would write one.

A FastAPI app whose ``GET /orders`` needs a bearer token, verified by the subscriber library's
:class:`~subscriber.Verifier` (key cache kept warm by the issuer's stream, heartbeats on, so
``keyherald status`` and the demo see which keys it holds). ``GET /healthz`` answers 200 while
the verifier is live or degraded, 503 when it is stale or not started.
"""

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .settings import DemoSettings

if TYPE_CHECKING:
    from subscriber.verifier import Verifier

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False)


def _unauthorized(reason: str) -> HTTPException:
    # RFC 6750 section 3: the reason goes in error_description, so callers can count it.
    return HTTPException(
        401,
        detail={"error": "invalid_token", "reason": reason},
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
    )


def create_app(settings: DemoSettings, name: str) -> FastAPI:
    """The service; its verifier starts and stops with the app."""
    from subscriber.errors import InvalidToken
    from subscriber.verifier import Verifier

    heartbeat_s = settings.demo_heartbeat_s
    verifier = Verifier(
        issuer=settings.issuer,
        audience=settings.demo_audience,
        redis_url=settings.redis_url,
        service=name,
        heartbeat_interval_s=heartbeat_s,
        heartbeat_ttl_s=max(3 * heartbeat_s, 2.0),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with verifier:
            logger.info("%s verifying for %s", name, settings.issuer)
            yield

    app = FastAPI(title=f"keyherald demo api ({name})", lifespan=lifespan)
    app.state.verifier = verifier

    async def claims(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> dict[str, Any]:
        if credentials is None:
            raise _unauthorized("missing_token")
        try:
            return verifier.verify(credentials.credentials)
        except InvalidToken as e:
            raise _unauthorized(e.reason) from None

    @app.get("/orders")
    async def orders(
        request: Request, token: Annotated[dict[str, Any], Depends(claims)]
    ) -> dict[str, Any]:
        return {"service": name, "sub": token.get("sub"), "orders": [{"id": 1, "total": 42}]}

    @app.get("/healthz")
    async def healthz(response: Response) -> dict[str, Any]:
        health = _health(verifier)
        if health.get("state") not in ("live", "degraded"):
            response.status_code = 503
        return health

    return app


def _health(verifier: "Verifier") -> dict[str, Any]:
    health = verifier.health()
    return {
        "state": str(getattr(health, "state", "unknown")),
        "version": getattr(health, "version", None),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    parser.add_argument("--name", default="api", help="service name in heartbeats (default api)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    # One log line per request would bury everything else in the demo's logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    app = create_app(DemoSettings(), args.name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
