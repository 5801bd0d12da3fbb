"""``keyherald demo loadgen``: mint tokens through the issuer and call the verifying services.

Tokens are minted with ``POST /admin/tokens`` (so always by the active key; in upstream mode
by the stand-in IdP's token endpoint, ``KEYHERALD_DEMO_TOKEN_URL``) and kept in a pool
until shortly before they expire; each request uses a token picked at random from the pool, so
tokens of a key that has just stopped signing keep being presented throughout its grace period,
which is where a careless rotation breaks.

A refused token is classified by asking the issuer for its key's state: a key that was revoked
makes the refusal expected; anything else is a *valid token rejected*, the number that must stay
0. ``GET /stats`` serves the counters; ``GET /healthz`` answers once a token was minted.
"""

import argparse
import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Response

from subscriber.jws import b64url_decode, strict_json_object

from .settings import DemoSettings

logger = logging.getLogger(__name__)

#: A token is dropped from the pool this long before its ``exp``.
expiry_margin_s = 1.5
mint_interval_s = 0.5
request_timeout_s = 5.0
api_wait_interval_s = 0.2
_DESCRIPTION = re.compile(r'error_description="([^"]*)"')


@dataclass(frozen=True, slots=True)
class PooledToken:
    """A minted token with the kid that signed it and its expiry."""

    token: str
    kid: str
    exp: float


@dataclass
class Stats:
    """Counters of one load generator."""

    minted: int = 0
    mint_failed: int = 0
    requests: int = 0
    verified: int = 0
    #: Verified tokens whose key had stopped signing (no longer the key of the newest mint):
    #: the grace period at work.
    verified_old_key: int = 0
    rejected: int = 0
    valid_rejected: int = 0
    revoked_rejected: int = 0
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    per_api: dict[str, Counter[str]] = field(default_factory=dict)
    kids_verified: Counter[str] = field(default_factory=Counter)
    valid_rejections: list[dict[str, Any]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON (``GET /stats``)."""
        return {
            "minted": self.minted,
            "mint_failed": self.mint_failed,
            "requests": self.requests,
            "verified": self.verified,
            "verified_old_key": self.verified_old_key,
            "rejected": self.rejected,
            "valid_rejected": self.valid_rejected,
            "revoked_rejected": self.revoked_rejected,
            "errors": self.errors,
            "reasons": dict(self.reasons),
            "per_api": {api: dict(c) for api, c in self.per_api.items()},
            "kids_verified": dict(self.kids_verified),
            "valid_rejections": self.valid_rejections[-10:],
        }


def token_kid(token: str) -> str:
    """The ``kid`` of a compact JWS header ("" when absent)."""
    header = strict_json_object(b64url_decode(token.split(".", 1)[0]))
    kid = header.get("kid")
    return kid if isinstance(kid, str) else ""


def token_exp(token: str) -> float:
    """The ``exp`` claim of a compact JWS (0 when absent), read without verifying."""
    parts = token.split(".")
    exp = strict_json_object(b64url_decode(parts[1])).get("exp")
    return float(exp) if isinstance(exp, int | float) else 0.0


def rejection_reason(response: httpx.Response) -> str:
    """The verifier's reason, from ``WWW-Authenticate`` or the JSON body."""
    match = _DESCRIPTION.search(response.headers.get("www-authenticate", ""))
    if match:
        return match.group(1)
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            detail = body.get("reason") or body.get("detail")
            if isinstance(detail, str):
                return detail
            if isinstance(detail, dict) and isinstance(detail.get("reason"), str):
                return str(detail["reason"])
    return f"http_{response.status_code}"


class LoadGenerator:
    """Mints tokens and spends them on the verifying services at ``requests_per_s``."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.pool: list[PooledToken] = []
        self._rng = random.Random()
        self._issuer = settings.issuer.rstrip("/")
        self._admin = {"Authorization": f"Bearer {settings.admin_token}"}

    async def run(self) -> None:
        """Run until cancelled."""
        async with httpx.AsyncClient(timeout=request_timeout_s) as client:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._mint_loop(client))
                tasks.create_task(self._call_loop(client))

    async def _mint_loop(self, client: httpx.AsyncClient) -> None:
        while True:
            await self.mint(client)
            await asyncio.sleep(mint_interval_s)

    async def mint(self, client: httpx.AsyncClient) -> None:
        """Mint one token and add it to the pool."""
        body = {
            "sub": f"loadgen-{self.stats.minted}",
            "aud": self.settings.demo_audience,
            "ttl_s": self.settings.demo_token_ttl_s,
        }
        upstream = self.settings.demo_token_url
        try:
            if upstream:  # the stand-in IdP's token endpoint
                response = await client.post(upstream, json=body)
            else:
                response = await client.post(
                    f"{self._issuer}/admin/tokens", json=body, headers=self._admin
                )
            response.raise_for_status()
            token = response.json()["access_token" if upstream else "token"]
            self.pool.append(PooledToken(token, token_kid(token), token_exp(token)))
            self.stats.minted += 1
        except (httpx.HTTPError, KeyError, ValueError) as e:
            self.stats.mint_failed += 1
            logger.warning("mint failed: %s", e)

    def pick(self) -> PooledToken | None:
        """A random token that stays valid for the whole request."""
        horizon = time.time() + expiry_margin_s
        self.pool = [t for t in self.pool if t.exp > horizon]
        return self._rng.choice(self.pool) if self.pool else None

    async def wait_for_apis(self, client: httpx.AsyncClient) -> None:
        """Wait until every verifying service answers ``/healthz``, so that services still
        starting up are not counted as failures."""
        for api in self.settings.api_urls:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{api}/healthz")).is_success:
                        break
                await asyncio.sleep(api_wait_interval_s)

    async def _call_loop(self, client: httpx.AsyncClient) -> None:
        await self.wait_for_apis(client)
        interval = 1.0 / self.settings.demo_requests_per_s
        apis = self.settings.api_urls
        while True:
            started = time.monotonic()
            token = self.pick()
            if token is not None and apis:
                await self.call(client, self._rng.choice(apis), token)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def call(self, client: httpx.AsyncClient, api: str, token: PooledToken) -> None:
        """Present ``token`` to ``api`` and count the outcome."""
        per_api = self.stats.per_api.setdefault(api, Counter())
        self.stats.requests += 1
        try:
            response = await client.get(
                f"{api}/orders", headers={"Authorization": f"Bearer {token.token}"}
            )
        except httpx.HTTPError as e:
            self.stats.errors += 1
            per_api["errors"] += 1
            logger.warning("request to %s failed: %s", api, e)
            return
        if response.status_code == 200:
            self.stats.verified += 1
            if self.pool and token.kid != self.pool[-1].kid:
                self.stats.verified_old_key += 1
            self.stats.kids_verified[token.kid] += 1
            per_api["verified"] += 1
            return
        if response.status_code != 401:
            self.stats.errors += 1
            per_api["errors"] += 1
            return
        reason = rejection_reason(response)
        self.stats.rejected += 1
        self.stats.reasons[reason] += 1
        per_api["rejected"] += 1
        if await self.key_state(client, token.kid) == "revoked":
            self.stats.revoked_rejected += 1
            # As a real client would: a token of a revoked key is thrown away, not retried.
            self.pool = [t for t in self.pool if t.kid != token.kid]
            return
        self.stats.valid_rejected += 1
        self.stats.valid_rejections.append(
            {"api": api, "kid": token.kid, "reason": reason, "at": time.time()}
        )
        logger.error("valid token rejected by %s: kid=%s reason=%s", api, token.kid, reason)

    async def key_state(self, client: httpx.AsyncClient, kid: str) -> str | None:
        """The issuer's current state of ``kid``, or None if it cannot tell."""
        try:
            response = await client.get(f"{self._issuer}/admin/keys", headers=self._admin)
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        for key in keys_of(response.json()):
            if key.get("kid") == kid:
                state = key.get("state")
                return state if isinstance(state, str) else None
        return None


def keys_of(body: Any) -> list[dict[str, Any]]:
    """The key records of a ``GET /admin/keys`` answer."""
    keys = body.get("keys", []) if isinstance(body, dict) else body
    return [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []


def create_app(generator: LoadGenerator) -> FastAPI:
    """A small app that runs ``generator`` for its lifetime and serves its counters."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(generator.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="keyherald demo loadgen", lifespan=lifespan)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return generator.stats.snapshot()

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(status_code=200 if generator.stats.minted else 503)

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8004, help="port of /stats (default 8004)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    # One log line per request would bury everything else in the demo's logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    app = create_app(LoadGenerator(DemoSettings.load()))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
