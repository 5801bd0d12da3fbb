"""The relay's admin API (FastAPI), behind the issuer's bearer-token dependency.

::

    POST   /admin/partners                    register; the response holds the secret, once
                                              (422 with ``error`` for a URL that can never
                                              be delivered to)
    GET    /admin/partners                    list (never a secret)
    GET    /admin/partners/{id}               one partner, with its queue depth
    POST   /admin/partners/{id}/disable       stop delivering (queue kept)
    POST   /admin/partners/{id}/enable        resume; the failure streak restarts
    DELETE /admin/partners/{id}               forget the partner, its queue and history
    POST   /admin/partners/{id}/rotate-secret new secret, once; the old one stays valid for
                                              the overlap
    GET    /admin/partners/{id}/attempts      latest delivery attempts, newest first
    POST   /admin/partners/{id}/replay        queue again every event from a version on; says
                                              how many events, as how many deliveries
    GET    /admin/dead-letters                exhausted deliveries and refused stream entries
    GET    /metrics                           Prometheus (admin token, like every call above)
    GET    /healthz                           200 while the app runs (no token: for probes)

A request body over 64 KiB is refused with 413 before it is read or the token is checked
(:class:`keyherald.body_limit.BodyLimit`).
"""

import logging
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from issuer.auth import admin_dependency
from keyherald.body_limit import BodyLimit, admin_body_max_bytes
from subscriber.events import EVENT_TYPES

from . import constants
from .consumer import read_history
from .errors import ConfigError, EgressRefused, PartnerNotFound
from .service import Relay

logger = logging.getLogger(__name__)


class PartnerIn(BaseModel):
    """A partner to register."""

    url: str = Field(
        max_length=constants.partner_url_max_chars,
        description="https endpoint (http only for allow-listed addresses)",
    )
    event_types: list[str] | None = Field(
        None, max_length=len(EVENT_TYPES), description="default: every event type"
    )
    description: str = Field("", max_length=constants.description_max_chars)


class ReplayIn(BaseModel):
    """Where a replay starts."""

    from_version: int = Field(ge=1)


def _relay(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


RelayDep = Annotated[Relay, Depends(_relay)]
router = APIRouter(prefix="/admin")


@router.post("/partners", status_code=status.HTTP_201_CREATED, response_model=None)
async def register(body: PartnerIn, relay: RelayDep) -> dict[str, Any] | JSONResponse:
    """Register a partner; the response carries its secret, which is never shown again."""
    try:
        partner, secret = await relay.partners.register(
            body.url, body.event_types, body.description
        )
    except (EgressRefused, ConfigError) as e:
        # A URL that can never be delivered to is refused now, with the reason, rather than
        # accepted and failing at every delivery.
        return JSONResponse(
            {"detail": str(e), "error": e.reason},
            status_code=422,
        )
    return {**partner.public(), "secret": secret}


@router.get("/partners")
async def list_partners(relay: RelayDep) -> list[dict[str, Any]]:
    """Every partner, without secrets."""
    return [p.public() for p in await relay.partners.list()]


@router.get("/partners/{partner_id}")
async def get_partner(partner_id: str, relay: RelayDep) -> dict[str, Any]:
    """One partner and the number of items waiting for it."""
    partner = await relay.partners.get(partner_id)
    return {**partner.public(), "queued": await relay.deliverer.store.depth(partner_id)}


@router.post("/partners/{partner_id}/disable")
async def disable(partner_id: str, relay: RelayDep) -> dict[str, Any]:
    """Stop delivering; the queue is kept."""
    return (await relay.partners.set_enabled(partner_id, False, "manual")).public()


@router.post("/partners/{partner_id}/enable")
async def enable(partner_id: str, relay: RelayDep) -> dict[str, Any]:
    """Resume delivering; the failure streak starts over."""
    return (await relay.deliverer.enable(partner_id)).public()


@router.delete("/partners/{partner_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(partner_id: str, relay: RelayDep) -> Response:
    """Forget the partner, its queue and its attempt history."""
    await relay.partners.delete(partner_id)
    await relay.deliverer.store.drop_partner(partner_id)
    relay.metrics.forget_partner(partner_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/partners/{partner_id}/rotate-secret")
async def rotate(partner_id: str, relay: RelayDep) -> dict[str, Any]:
    """A new secret, shown once; the previous one stays valid for the overlap."""
    partner, secret = await relay.partners.rotate_secret(partner_id)
    return {**partner.public(), "secret": secret}


@router.get("/partners/{partner_id}/attempts")
async def attempts(
    partner_id: str, relay: RelayDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, str]]:
    """The latest delivery attempts (time, status, latency, error), newest first."""
    await relay.partners.get(partner_id)
    return await relay.deliverer.store.attempts(partner_id, limit)


@router.post("/partners/{partner_id}/replay", status_code=status.HTTP_202_ACCEPTED)
async def replay(partner_id: str, body: ReplayIn, relay: RelayDep) -> dict[str, Any]:
    """Queue again, with new webhook ids, every event still in the stream from a version; the
    answer says how many events and as how many deliveries (fewer only with collapse on)."""
    await relay.partners.get(partner_id)
    events = await read_history(relay.redis, relay.issuer, relay.announce_keys, body.from_version)
    plan = await relay.deliverer.replay(partner_id, events)
    return {
        "queued": plan.events,
        "deliveries": plan.deliveries,
        "versions": [plan.versions[0], plan.versions[-1]] if plan.versions else [],
        "collapse": relay.deliverer.policy.collapse,
        "from_version": body.from_version,
    }


@router.get("/dead-letters")
async def dead_letters(
    relay: RelayDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, str]]:
    """Exhausted deliveries and refused stream entries, newest first."""
    return await relay.deliverer.store.dead_letters(limit)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Redis restarting or unreachable is a condition to retry, not a server bug.
    logger.warning("Redis unavailable for %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "the relay's store is unavailable", "error": "store_unavailable"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def create_app(relay: Relay, admin_token: str | None) -> FastAPI:
    """The admin app of one relay replica.

    :param admin_token: bearer token; ``None`` or empty refuses every admin call.
    """
    # No OpenAPI document or docs: they would map the admin API for anyone who asks.
    app = FastAPI(title="keyherald relay", docs_url=None, redoc_url=None, openapi_url=None)
    # Before routing, so before the body is read and before the token is checked.
    app.add_middleware(BodyLimit, max_bytes=admin_body_max_bytes)
    app.state.relay = relay
    admin = Depends(admin_dependency(admin_token))
    app.include_router(router, dependencies=[admin])
    app.add_exception_handler(PartnerNotFound, _not_found)
    app.add_exception_handler(aioredis.RedisError, _store_unavailable)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Partner ids and delivery counts are not for the public: scrapers send the admin token
    # (Prometheus: `authorization: {credentials: ...}`).
    @app.get("/metrics", include_in_schema=False, dependencies=[admin])
    async def metrics() -> Response:
        return Response(generate_latest(relay.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
