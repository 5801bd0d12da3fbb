"""The watcher's HTTP service: per upstream, the metadata and signed snapshot verifiers need.

For an upstream issuer ``iss`` (its tag ``t`` = :func:`subscriber.redis_keys.issuer_tag`):

- ``GET /upstreams/<t>/.well-known/openid-configuration``: ``issuer`` (the upstream's),
  ``jwks_uri`` (the provider's own JWKS, the verifiers' fallback) and the ``keyherald`` member
  of the protocol (stream, announcement keys, snapshot URI, freshness stream and interval,
  version, epoch), ``Cache-Control: no-cache``;
- ``GET /upstreams/<t>/.well-known/keyherald-snapshot.jwt``: the signed key-set snapshot;
- ``GET /upstreams``: every upstream watched with its tag; ``GET /healthz``: lease, requests
  made upstream, ``304`` answers, hints read.

``create_app(settings=...)`` builds the watches and runs them in the lifespan; tests may pass
ready-made :class:`~watcher.service.UpstreamWatch` objects and ``run_watches=False``.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from issuer.app import add_store_error_handlers
from issuer.jwks import etag_matches
from subscriber import redis_keys
from subscriber.clock import Clock, system_clock
from subscriber.constants import METADATA_PATH, SNAPSHOT_PATH, UPSTREAMS_PATH

from . import constants
from .errors import UpstreamError
from .ledger import UpstreamLedger
from .schedule import PollPolicy
from .service import UpstreamWatch
from .settings import WatchSettings
from .upstream import UpstreamClient

__all__ = ["build_watches", "create_app"]

logger = logging.getLogger(__name__)


def build_watches(
    settings: WatchSettings,
    redis: aioredis.Redis,
    http: httpx.AsyncClient,
    *,
    clock: Clock = system_clock,
) -> list[UpstreamWatch]:
    """One :class:`UpstreamWatch` per configured upstream.

    :raises ConfigError: a setting that cannot work.
    """
    kek = settings.load_kek()
    policy = PollPolicy(
        floor_s=settings.poll_floor_s,
        ceiling_s=settings.poll_ceiling_s,
        default_interval_s=settings.default_interval_s,
    )
    watches = []
    for upstream in settings.upstream_list():
        ledger = UpstreamLedger(
            redis=redis,
            issuer=upstream.issuer,
            kek=kek,
            retention_s=max(settings.retire_hold_s, constants.min_stream_retention_s),
            clock=clock,
            state_dir=settings.state_dir,
            freshness_interval_s=settings.freshness_interval_s,
        )
        client = UpstreamClient(http, issuer=upstream.issuer, jwks_url=upstream.jwks_url)
        watches.append(
            UpstreamWatch(
                ledger=ledger,
                client=client,
                policy=policy,
                hold_s=settings.retire_hold_s,
                cooldown_s=settings.cooldown_s,
                lease_ttl_s=settings.lease_ttl_s,
                tick_s=settings.tick_interval_s,
                clock=clock,
            )
        )
    return watches


def create_app(
    watches: Sequence[UpstreamWatch],
    *,
    run_watches: bool = True,
    on_shutdown: Callable[[], Any] | None = None,
) -> FastAPI:
    """The watcher app serving ``watches``; ``app.state.watches`` maps tag -> watch.

    :param run_watches: run each watch's loop in the lifespan.
    :param on_shutdown: awaited after the loops stop (closing the clients the caller made).
    """
    by_tag = {redis_keys.issuer_tag(w.issuer): w for w in watches}
    app = FastAPI(
        title="keyherald watcher",
        summary="Announces hosted identity providers' keys to keyherald verifiers.",
        version="0.1.0",
        lifespan=_lifespan(list(watches), run_watches, on_shutdown),
    )
    app.state.watches = by_tag

    def watch_for(tag: str) -> UpstreamWatch:
        watch = by_tag.get(tag)
        if watch is None:
            raise HTTPException(404, f"no upstream with tag {tag!r}")
        return watch

    add_store_error_handlers(app)

    @app.get(UPSTREAMS_PATH, summary="Every upstream watched, with its tag")
    async def upstreams() -> list[dict[str, str]]:
        return [{"issuer": w.issuer, "tag": tag} for tag, w in by_tag.items()]

    @app.get(UPSTREAMS_PATH + "/{tag}" + METADATA_PATH, summary="Metadata for one upstream")
    async def metadata(tag: str, request: Request) -> JSONResponse:
        watch = watch_for(tag)
        ledger = watch.ledger
        announcement_keys = await ledger.announcement_jwks()  # one authenticated read
        snap = ledger.hwm.snapshot
        assert snap is not None
        base = str(request.base_url).rstrip("/") + f"{UPSTREAMS_PATH}/{tag}"
        client = watch.poller.client
        if client.jwks_url is None:  # a replica that never led has not discovered it yet
            try:
                await client.discover()
            except UpstreamError as e:
                raise HTTPException(503, f"upstream discovery failed: {e}") from e
        jwks_uri = client.jwks_url
        body = {
            "issuer": watch.issuer,
            "jwks_uri": jwks_uri,
            "keyherald": {
                "announcer": "watcher",
                "stream": redis_keys.event_stream(watch.issuer),
                "announcement_keys": announcement_keys,
                "snapshot_uri": base + SNAPSHOT_PATH,
                "freshness_stream": redis_keys.freshness_stream(watch.issuer),
                "freshness_interval_s": ledger.freshness_interval_s,
                "miss_hints": redis_keys.miss_hints(watch.issuer),
                "version": snap.version,
                "epoch": snap.epoch,
            },
        }
        return JSONResponse(body, headers={"Cache-Control": "no-cache"})

    @app.get(UPSTREAMS_PATH + "/{tag}" + SNAPSHOT_PATH, summary="Signed key-set snapshot")
    async def snapshot(tag: str, if_none_match: str | None = Header(None)) -> Response:
        signed = await watch_for(tag).ledger.signed_snapshot()
        headers = {"Cache-Control": "no-cache", "ETag": signed.etag}
        if etag_matches(if_none_match, signed.etag):
            return Response(status_code=304, headers=headers)
        return Response(signed.token, media_type="application/jwt", headers=headers)

    @app.get("/healthz", summary="Lease, upstream requests, hints")
    async def healthz() -> dict[str, Any]:
        return {"upstreams": [w.status() for w in by_tag.values()]}

    return app


def _lifespan(
    watches: list[UpstreamWatch], run: bool, on_shutdown: Callable[[], Any] | None
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for watch in watches:
            await watch.ledger.snapshot()  # initialise the store, unseal the announcement key
        tasks = [
            asyncio.create_task(w.run(), name=f"keyherald-watch-{i}")
            for i, w in enumerate(watches)
            if run
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if on_shutdown is not None:
                result = on_shutdown()
                if asyncio.iscoroutine(result):
                    await result

    return lifespan
