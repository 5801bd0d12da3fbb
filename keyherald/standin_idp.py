"""A local stand-in for a hosted identity provider: discovery, JWKS with real caching headers,
rotation the way providers rotate, and tokens. For tests and ``keyherald demo --upstream``.

::

    idp = StandInIdP(alg="RS256", max_age_s=60)
    async with idp.serve() as url:          # uvicorn on 127.0.0.1, a free port
        token = idp.mint({"sub": "u", "aud": "api"})
        idp.publish_next(); idp.switch(); idp.remove_old()    # Auth0's rotation
        idp.rotate_at_once()                                  # a provider that signs at once

It is a plain ASGI app (``idp`` itself), so tests may also reach it through
``httpx.ASGITransport``. It serves:

- ``/.well-known/openid-configuration``: ``issuer``, ``jwks_uri``,
  ``id_token_signing_alg_values_supported``;
- ``/.well-known/jwks.json``: ``Cache-Control: public, max-age=N``, a strong ``ETag`` and a
  ``Last-Modified`` that change only when the key set does, ``304`` to a matching
  ``If-None-Match`` (or, without one, ``If-Modified-Since``); scripted failures (``429``/
  ``503`` with ``Retry-After``) through :meth:`StandInIdP.fail_next`;
- ``POST /oauth/token``: a JSON object of claims (``ttl_s`` sets the lifetime) in, a token
  signed by the signing key out (``{"access_token": ..., "token_type": "Bearer"}``), for the
  demo's load generator. No client authentication: loopback only, never a real IdP.

Every request is counted (:attr:`StandInIdP.requests`, per path, and the ``304`` answers).
The private keys never leave the object; this is a test fixture, not an identity provider.
"""

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import uvicorn

from issuer import keygen
from issuer.signer import encode_jwt
from subscriber.clock import Clock, system_clock

from .redis_server import free_port

__all__ = ["DISCOVERY_PATH", "JWKS_PATH", "TOKEN_PATH", "StandInIdP"]

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"
TOKEN_PATH = "/oauth/token"
#: Largest token request body read (claims of a test token).
MAX_TOKEN_REQUEST_BYTES = 4096

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    remaining: int


class StandInIdP:
    """A provider with one signing key at a time and a JWKS that may hold more.

    :param alg: the signing algorithm of every key it makes.
    :param issuer: its ``iss``; set to the served URL by :meth:`serve` when left ``None``.
    :param max_age_s: ``Cache-Control: max-age`` of the JWKS.
    :param publish_alg: put ``alg`` in each JWK (Entra does not).
    :param advertised_algs: ``id_token_signing_alg_values_supported`` (default ``[alg]``).
    :param clock: seconds since the epoch, for ``iat``/``exp`` and ``Last-Modified``.
    """

    def __init__(
        self,
        *,
        alg: str = "RS256",
        issuer: str | None = None,
        max_age_s: int = 60,
        publish_alg: bool = True,
        advertised_algs: list[str] | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.alg = alg
        self.issuer = issuer
        self.max_age_s = max_age_s
        self.publish_alg = publish_alg
        self.advertised_algs = advertised_algs if advertised_algs is not None else [alg]
        self._clock = clock
        first = keygen.generate(alg)
        #: Keys in the JWKS, in publication order; ``signing`` is the one that signs.
        self.published: list[keygen.KeyPair] = [first]
        self.signing = first
        self.requests: Counter[str] = Counter()
        self.not_modified = 0
        #: (time, path, status) of every request, in order.
        self.log: list[tuple[float, str, int]] = []
        self._failures: list[_Failure] = []
        self._body = b""
        self._etag = ""
        self._last_modified = ""
        self._render()

    # --- rotation -------------------------------------------------------------------------

    def publish_next(self) -> str:
        """Auth0 step 1: publish the next key (it does not sign yet). Returns its kid."""
        pair = keygen.generate(self.alg)
        self.published.append(pair)
        self._render()
        return pair.kid

    def switch(self) -> str:
        """Auth0 step 2: the newest published key starts signing. Returns its kid."""
        self.signing = self.published[-1]
        return self.signing.kid

    def remove_old(self) -> list[str]:
        """Auth0 step 3: every key but the signing one leaves the JWKS. Returns their kids."""
        gone = [p.kid for p in self.published if p is not self.signing]
        self.published = [self.signing]
        self._render()
        return gone

    def rotate_at_once(self) -> str:
        """A provider with no lead: a new key is published and signs in the same instant."""
        kid = self.publish_next()
        self.switch()
        return kid

    def fail_next(self, status: int, *, count: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``count`` JWKS requests with ``status`` (and ``Retry-After``)."""
        self._failures.append(_Failure(status, retry_after, count))

    # --- tokens ---------------------------------------------------------------------------

    def mint(self, claims: dict[str, Any], *, ttl_s: float = 300.0, kid: str | None = None) -> str:
        """A token signed by the signing key (or by the published key ``kid``)."""
        pair = self.signing if kid is None else next(p for p in self.published if p.kid == kid)
        now = int(self._clock())
        body = {"iss": self.issuer, "iat": now, "exp": now + int(ttl_s)} | claims
        return encode_jwt(pair, body)

    # --- HTTP -----------------------------------------------------------------------------

    @property
    def jwks(self) -> dict[str, Any]:
        """The JWKS as served."""
        keys = []
        for pair in self.published:
            jwk = dict(pair.jwk)
            if not self.publish_alg:
                jwk.pop("alg", None)
            keys.append(jwk)
        return {"keys": keys}

    def _render(self) -> None:
        body = json.dumps(self.jwks, separators=(",", ":")).encode()
        if body != self._body:
            self._body = body
            self._etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._last_modified = formatdate(self._clock(), usegmt=True)

    def discovery(self) -> dict[str, Any]:
        """The discovery document as served."""
        assert self.issuer is not None, "serve() or issuer= sets the issuer"
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer.rstrip("/") + JWKS_PATH,
            "id_token_signing_alg_values_supported": self.advertised_algs,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.requests[path] += 1
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}

        async def logged(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.log.append((self._clock(), path, message["status"]))
            await send(message)

        if path == DISCOVERY_PATH:
            body = json.dumps(self.discovery()).encode()
            await _reply(logged, 200, body, {"cache-control": "public, max-age=3600"})
        elif path == JWKS_PATH:
            await self._jwks(logged, headers)
        elif path == TOKEN_PATH and scope["method"] == "POST":
            await self._token(logged, receive)
        else:
            await _reply(logged, 404, b'{"error":"not_found"}', {})

    async def _jwks(self, send: Send, headers: dict[str, str]) -> None:
        if self._failures:
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.pop(0)
            extra = {"retry-after": failure.retry_after} if failure.retry_after else {}
            await _reply(send, failure.status, b'{"error":"unavailable"}', extra)
            return
        caching = {
            "cache-control": f"public, max-age={self.max_age_s}",
            "etag": self._etag,
            "last-modified": self._last_modified,
        }
        match = headers.get("if-none-match")
        if (match is not None and match == self._etag) or (
            match is None and headers.get("if-modified-since") == self._last_modified
        ):
            self.not_modified += 1
            await _reply(send, 304, b"", caching)
            return
        await _reply(send, 200, self._body, caching)

    async def _token(self, send: Send, receive: Receive) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_TOKEN_REQUEST_BYTES:
                await _reply(send, 413, b'{"error":"request_too_large"}', {})
                return
            if not message.get("more_body"):
                break
        try:
            claims = json.loads(body or b"{}")
            if not isinstance(claims, dict):
                raise ValueError("not an object")
            ttl_s = float(claims.pop("ttl_s", 300.0))
        except (ValueError, TypeError):
            await _reply(send, 400, b'{"error":"invalid_request"}', {})
            return
        token = self.mint(claims, ttl_s=ttl_s)
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": int(ttl_s)}
        await _reply(send, 200, json.dumps(answer).encode(), {"cache-control": "no-store"})

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int | None = None) -> AsyncIterator[str]:
        """Serve on ``host`` (loopback) until the block ends; yields the base URL."""
        port = port or free_port()
        url = f"http://{host}:{port}"
        if self.issuer is None:
            self.issuer = url
        config = uvicorn.Config(
            self, host=host, port=port, log_level="warning", lifespan="off", interface="asgi3"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"the stand-in IdP did not start on {url}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in IdP did not start on {url} within 10 s")
            await asyncio.sleep(0.01)
        try:
            yield url
        finally:
            server.should_exit = True
            await task


async def _reply(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    if status != 304:
        raw += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body if status != 304 else b""})
