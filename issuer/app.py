"""The issuer's HTTP service: JWKS, metadata and the admin API.

Production: ``keyherald issuer`` builds it from the environment. Tests build the real app
in-process against the test Redis and drive time with a manual clock::

    from issuer import IssuerSettings, create_app
    from subscriber.clock import ManualClock

    settings = IssuerSettings(issuer="https://issuer.test", kek=KEK_B64, admin_token="t0ken")
    clock = ManualClock()
    app = create_app(settings=settings, redis=client, clock=clock, run_scheduler=False)
    authority = app.state.authority        # rotate/activate/revoke/tick directly
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as http:
        jwks = (await http.get("/.well-known/jwks.json")).json()
        clock.advance(settings.lead_s); await authority.tick()

No lifespan is needed under ``ASGITransport``: the store bootstraps on first use. With
``run_scheduler=True`` (the default) the lifespan checks Redis persistence, bootstraps and
runs the :class:`~issuer.scheduler.Scheduler` loop.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisClusterException

from keyherald.body_limit import BodyLimit, admin_body_max_bytes
from subscriber.clock import Clock, system_clock
from subscriber.constants import JWKS_PATH, METADATA_PATH, SNAPSHOT_PATH
from subscriber.redis_conn import RedisClients, connect

from .auth import admin_dependency
from .authority import Applied, Authority
from .durability import NotReplicated
from .errors import (
    AlreadyApplied,
    IdempotencyKeyReused,
    IdempotencyRecordTampered,
    IllegalTransition,
    InvalidIdempotencyKey,
    StoreTampered,
    UnknownKey,
    VersionConflict,
)
from .idempotency import HEADER, REPLAYED_HEADER, IdempotencyRecords, IdempotentRequest, parse_key
from .jwks import etag_matches
from .kek import Kek
from .metrics import integrity_registry
from .models import (
    ChangeView,
    ErrorView,
    KeyView,
    PlannedTransition,
    PlanView,
    TokenRequest,
    TokenResponse,
)
from .published import PublishedDocuments
from .scheduler import Scheduler
from .settings import IssuerSettings
from .signer import RESERVED_CLAIMS, Signer
from .store import check_persistence

logger = logging.getLogger(__name__)

KidPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="RFC 7638 kid")]
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorView, "description": "missing or wrong admin token"},
}
_IDEMPOTENCY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorView, "description": "a malformed Idempotency-Key"},
    422: {"model": ErrorView, "description": "the Idempotency-Key was used for another request"},
}
_KID_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorView, "description": "unknown kid"},
    409: {"model": ErrorView, "description": "illegal transition from the key's state"},
    **_IDEMPOTENCY_ERRORS,
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="up to 255 printable ASCII characters, e.g. a UUID: a retry with the same "
        "key within KEYHERALD_IDEMPOTENCY_RETENTION_S gets the first result again "
        "(`Idempotent-Replayed: true`) and changes nothing",
    ),
]


def create_app(
    *,
    settings: IssuerSettings | None = None,
    redis: aioredis.Redis | None = None,
    clock: Clock = system_clock,
    run_scheduler: bool = True,
    kek: Kek | None = None,
) -> FastAPI:
    """Build the issuer app. ``app.state.authority`` is the :class:`Authority` it serves.

    :param settings: default: read from ``KEYHERALD_*`` environment variables.
    :param redis: a client the caller owns (not closed by the app); default: one from
        ``settings.redis_url``, closed at shutdown.
    :param clock: time source of every lifecycle decision.
    :param run_scheduler: run the transition loop in the lifespan (off in most tests: call
        ``app.state.authority.tick()`` instead).
    :param kek: default: ``settings.load_kek()``.
    :raises ConfigError: an unsafe policy or a missing KEK.
    """
    settings = settings or IssuerSettings()  # type: ignore[call-arg]  # issuer from the env
    policy = settings.policy()
    kek = kek or settings.load_kek()
    target = settings.redis_target()
    # A socket timeout, so that a stalled Redis turns into a stale JWKS or a 503 instead of
    # requests (and the scheduler) hanging until it comes back.
    owned = None
    if redis is None:
        owned = connect(target, socket_timeout_s=settings.redis_timeout_s)
        redis = owned.primary
    authority = Authority(
        redis=redis,
        issuer=settings.issuer,
        policy=policy,
        kek=kek,
        clock=clock,
        gate=settings.gate(),
        state_dir=settings.state_dir,
        freshness_interval_s=settings.freshness_interval_s,
    )
    authority.store.durability = settings.durability()
    signer = Signer(authority)
    published = PublishedDocuments(authority)

    app = FastAPI(
        title="keyherald issuer",
        summary="Announced JWT signing-key rotation: JWKS, metadata and the admin API.",
        version="0.1.0",
        docs_url="/docs" if settings.openapi_docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.openapi_docs else None,
        lifespan=_lifespan(authority, published, settings, run_scheduler, owned),
    )
    # Before routing, so an oversized body is refused before it is read or the token checked.
    app.add_middleware(BodyLimit, max_bytes=admin_body_max_bytes)
    app.state.authority = authority
    app.state.signer = signer
    app.state.published = published
    app.state.settings = settings
    _add_error_handlers(app)
    _add_public_routes(app, authority, published)
    records = IdempotencyRecords(kek, settings.issuer, retention_s=settings.idempotency_retention_s)
    app.include_router(_admin_router(authority, published, signer, records, _secret(settings)))
    app.include_router(_metrics_router(authority, _secret(settings)))
    return app


def _lifespan(
    authority: Authority,
    published: PublishedDocuments,
    settings: IssuerSettings,
    run_scheduler: bool,
    owned: RedisClients | None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_persistence(authority.redis)
        await authority.snapshot()  # bootstraps an empty store before the first request
        tasks = [asyncio.create_task(published.follow(), name="keyherald-published")]
        if run_scheduler:
            scheduler = Scheduler(
                authority,
                lease_ttl_s=settings.lease_ttl_s,
                tick_interval_s=settings.tick_interval_s,
            )
            tasks.append(asyncio.create_task(scheduler.run(), name="keyherald-scheduler"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if owned is not None:
                await owned.aclose()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownKey)
    async def unknown_kid(request: Request, exc: UnknownKey) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": "unknown_kid"}, status_code=404)

    @app.exception_handler(IllegalTransition)
    async def illegal(request: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": "illegal_transition"}, status_code=409)

    @app.exception_handler(VersionConflict)
    async def conflict(request: Request, exc: VersionConflict) -> JSONResponse:
        # Only other replicas' changes can outpace the retries (this process's queue up).
        return JSONResponse(
            {
                "detail": "the key set kept changing under concurrent changes; retry",
                "error": "concurrent_change",
            },
            status_code=409,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(InvalidIdempotencyKey)
    async def invalid_key(request: Request, exc: InvalidIdempotencyKey) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": "invalid_idempotency_key"}, 400)

    @app.exception_handler(IdempotencyKeyReused)
    async def key_reused(request: Request, exc: IdempotencyKeyReused) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": "idempotency_key_reused"}, 422)

    @app.exception_handler(IdempotencyRecordTampered)
    async def record_tampered(request: Request, exc: IdempotencyRecordTampered) -> JSONResponse:
        # No Retry-After: the same key meets the same record until it expires. Whether the
        # change was made is for the operator to read (GET /admin/keys) before a new key.
        return JSONResponse(
            {
                "detail": f"{exc}: it is neither replayed nor carried out again; check the key "
                "set (GET /admin/keys) and send the request under a new key if it is still "
                "wanted",
                "error": "idempotency_record_tampered",
            },
            status_code=503,
        )

    add_store_error_handlers(app)


def add_store_error_handlers(app: FastAPI) -> None:
    """``503`` with ``Retry-After`` for a store that is unreachable or fails its integrity
    check (the issuer's and the watcher's apps)."""

    @app.exception_handler(StoreTampered)
    async def tampered(request: Request, exc: StoreTampered) -> JSONResponse:
        # Logged as tampering where it was found; the caller learns only that it must wait.
        return JSONResponse(
            {"detail": "the key store failed its integrity check", "error": "store_tampered"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # A failover in progress (no primary yet, a demoted one, a cluster re-electing) is a
        # moment to retry, never a 500.
        logger.warning("Redis unavailable for %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the key store is unavailable", "error": "store_unavailable"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    async def not_replicated(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("transition not replicated for %s: %s", request.url.path, exc)
        return JSONResponse(
            {"detail": str(exc), "error": "not_replicated"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    for error in (aioredis.RedisError, RedisClusterException, OSError, TimeoutError):
        app.add_exception_handler(error, store_unavailable)
    app.add_exception_handler(NotReplicated, not_replicated)


def _add_public_routes(app: FastAPI, authority: Authority, published: PublishedDocuments) -> None:
    cache_control = f"public, max-age={int(authority.policy.jwks_max_age_s)}"

    @app.get(
        JWKS_PATH,
        tags=["public"],
        summary="Published keys: pending, active and retiring",
        responses={200: {"content": {"application/json": {}}}, 304: {"description": "unchanged"}},
        response_class=Response,
    )
    async def jwks(request: Request) -> Response:
        # From memory (issuer/published.py); with no-cache, memory only once the store's
        # head confirms it, else the authority's copy.
        request_headers = request.headers
        no_cache = "no-cache" in request_headers.get("cache-control", "")
        document = await published.jwks(revalidate=no_cache)
        headers = {"Cache-Control": cache_control, "ETag": document.etag}
        if_none_match = request_headers.get("if-none-match")
        if if_none_match == document.etag or etag_matches(if_none_match, document.etag):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(document.body, media_type="application/json", headers=headers)

    @app.get(
        SNAPSHOT_PATH,
        tags=["public"],
        summary="The key set as a JWT signed by the announcement key (verifiers resync from it)",
        responses={200: {"content": {"application/jwt": {}}}, 304: {"description": "unchanged"}},
        response_class=Response,
    )
    async def signed_snapshot(request: Request) -> Response:
        # From memory like the JWKS; the no-cache check of a storm of verifiers starting at
        # once is one shared read of the store's head (issuer/published.py).
        no_cache = "no-cache" in request.headers.get("cache-control", "")
        signed = await published.snapshot(revalidate=no_cache)
        if_none_match = request.headers.get("if-none-match")
        headers = {"Cache-Control": "no-cache", "ETag": signed.etag}
        if etag_matches(if_none_match, signed.etag):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(signed.token, media_type="application/jwt", headers=headers)

    @app.get(METADATA_PATH, tags=["public"], summary="Issuer metadata and announcement keys")
    async def openid_configuration(request: Request) -> Response:
        no_cache = "no-cache" in request.headers.get("cache-control", "")
        body = await published.metadata(revalidate=no_cache)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


def _metrics_router(authority: Authority, token: str | None) -> APIRouter:
    admin = APIRouter(prefix="/admin", dependencies=[Depends(admin_dependency(token))])

    @admin.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        registry = integrity_registry(authority)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return admin


def _admin_router(
    authority: Authority,
    published: PublishedDocuments,
    signer: Signer,
    records: IdempotencyRecords,
    token: str | None,
) -> APIRouter:
    change = functools.partial(_change, records=records, published=published)

    admin = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(admin_dependency(token))],
        responses=_UNAUTHORIZED,
    )

    @admin.get("/keys", summary="Every key with its state and timestamps")
    async def list_keys() -> list[KeyView]:
        return [KeyView.of(k) for k in await authority.keys()]

    @admin.get("/plan", summary="Upcoming transitions with their times")
    async def plan() -> PlanView:
        transitions = await authority.plan()
        _, version = await authority.store.head()
        return PlanView(
            now=authority.clock(),
            version=version,
            transitions=[PlannedTransition.of(t) for t in transitions],
        )

    @admin.post(
        "/rotate",
        summary="Publish a new pending key now",
        status_code=201,
        response_model=ChangeView,
        responses=_IDEMPOTENCY_ERRORS,
    )
    async def rotate(request: Request, idempotency_key: IdempotencyKey = None) -> Response:
        return await change(request, 201, lambda once: authority.rotate(idempotency=once))

    @admin.get(
        "/keys/{kid}/readiness",
        responses={404: _KID_ERRORS[404]},
        summary="Which live verifiers hold the key, and since when",
    )
    async def readiness(kid: KidPath) -> dict[str, Any]:
        ready = await authority.readiness(kid)
        held = kid in await authority.held_activations()
        return {**ready.to_dict(), "gate": authority.gate.mode, "activation_held": held}

    @admin.post(
        "/keys/{kid}/activate",
        responses=_KID_ERRORS,
        summary="Activate a pending key published for the lead",
        response_model=ChangeView,
    )
    async def activate(
        kid: KidPath, request: Request, idempotency_key: IdempotencyKey = None
    ) -> Response:
        return await change(request, 200, lambda once: authority.activate(kid, idempotency=once))

    @admin.post(
        "/keys/{kid}/retire",
        responses=_KID_ERRORS,
        summary="Withdraw a pending key, or end a finished grace",
        response_model=ChangeView,
    )
    async def retire(
        kid: KidPath, request: Request, idempotency_key: IdempotencyKey = None
    ) -> Response:
        return await change(request, 200, lambda once: authority.retire(kid, idempotency=once))

    @admin.post(
        "/keys/{kid}/revoke",
        responses=_KID_ERRORS,
        summary="Emergency removal; replaces the active key at once",
        response_model=ChangeView,
    )
    async def revoke(
        kid: KidPath, request: Request, idempotency_key: IdempotencyKey = None
    ) -> Response:
        return await change(request, 200, lambda once: authority.revoke(kid, idempotency=once))

    @admin.post(
        "/tokens",
        summary="Sign a token with the active key",
        responses={422: {"description": "ttl_s above the max token TTL, or a reserved claim"}},
    )
    async def mint(body: TokenRequest) -> TokenResponse:
        max_ttl_s = authority.policy.max_token_ttl_s
        if body.ttl_s > max_ttl_s:
            raise HTTPException(
                422,
                f"ttl_s={body.ttl_s} exceeds max_token_ttl_s={max_ttl_s:g}",
            )
        reserved = (RESERVED_CLAIMS | {"sub", "aud"}) & body.claims.keys()
        if reserved:
            raise HTTPException(422, f"claims may not set {sorted(reserved)}")
        minted = await signer.mint(
            {**body.claims, "sub": body.sub, "aud": body.aud}, ttl_s=body.ttl_s
        )
        return TokenResponse(token=minted.token, kid=minted.kid, exp=minted.exp)

    return admin


async def _change(
    request: Request,
    status_code: int,
    apply: Callable[[IdempotentRequest | None], Awaitable[Applied]],
    *,
    records: IdempotencyRecords,
    published: PublishedDocuments,
) -> Response:
    key = parse_key(request.headers.getlist(HEADER))
    idempotency = None
    if key is not None:
        idempotency = records.request(
            key,
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            body=await request.body(),
            status=status_code,
            render=_render,
        )
    try:
        applied = await apply(idempotency)
    except AlreadyApplied as done:
        return Response(
            done.body, done.status, media_type="application/json", headers={REPLAYED_HEADER: "true"}
        )
    # The caller reads its own write: the public documents are rendered again first.
    published.changed()
    return Response(_render(applied), status_code, media_type="application/json")


def _render(applied: Applied) -> bytes:
    # What a change answers, and what a retry under its Idempotency-Key gets again.
    return ChangeView.of(applied).model_dump_json().encode()


def _secret(settings: IssuerSettings) -> str | None:
    if settings.admin_token is None:
        logger.warning("KEYHERALD_ADMIN_TOKEN is not set: the admin API refuses every request")
        return None
    return settings.admin_token.get_secret_value()
