"""HTTP and Redis clients shared by every :class:`~subscriber.Verifier` of a process.

A verifier given only URLs needs an HTTP client (metadata, JWKS) and a Redis client (stream,
heartbeats). Built per verifier, they cost about 0.9 MiB and 30 ms each (most of it the CA
bundle, loaded even for an ``http://`` issuer), so a process with many verifiers paid that
many times. Here they are shared, with no change to the caller's code:

- one client per event loop and settings (``asyncio`` clients are bound to their loop: a
  :class:`~subscriber.SyncVerifier`, with its private loop, gets its own);
- counted: :func:`acquire_http` / :func:`acquire_redis` add a user, :func:`release` removes
  one, and the last release closes the client;
- the HTTP client opens one connection pool per scheme on first use, so the CA bundle is
  loaded only once an ``https://`` URL is fetched.

Clients a caller passes to a verifier (``redis=``, ``http_client=``) are never touched here.
"""

import asyncio
import threading
from typing import Any

import httpx

from .redis_conn import RedisClients, connect

__all__ = ["acquire_http", "acquire_redis", "release", "shared_count"]

_lock = threading.Lock()
# (kind, loop, settings...) -> [client, users]; and id(client) -> that key, to release it.
_shared: dict[tuple[Any, ...], list[Any]] = {}
_keys: dict[int, tuple[Any, ...]] = {}


class _PerSchemeTransport(httpx.AsyncBaseTransport):
    """``http://`` and ``https://`` each on its own pool, built on first use.

    Only the ``https`` pool loads the CA bundle and verifies certificates; the ``http`` pool
    is never handed an ``https`` request, so it needs no TLS context at all.
    """

    def __init__(self) -> None:
        self._pools: dict[str, httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        pool = self._pools.get(scheme)
        if pool is None:
            if scheme not in ("http", "https"):
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
            pool = self._pools[scheme] = httpx.AsyncHTTPTransport(verify=scheme == "https")
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()


def _acquire(key: tuple[Any, ...], build: Any) -> Any:
    with _lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = [build(), 0]
            _keys[id(entry[0])] = key
        entry[1] += 1
        return entry[0]


def acquire_http(timeout_s: float) -> httpx.AsyncClient:
    """The shared HTTP client of the running loop for ``timeout_s``; :func:`release` it."""
    key = ("http", asyncio.get_running_loop(), timeout_s)
    client: httpx.AsyncClient = _acquire(
        key, lambda: httpx.AsyncClient(timeout=timeout_s, transport=_PerSchemeTransport())
    )
    return client


def acquire_redis(url: str, socket_timeout_s: float) -> RedisClients:
    """The shared clients of the running loop for a deployment URL (any form of
    :mod:`subscriber.redis_conn`); :func:`release` them.

    Blocking reads still take a connection each from the shared pool; what is shared is the
    pool, its parsed settings, and the idle connections between commands.
    """
    key = ("redis", asyncio.get_running_loop(), url, socket_timeout_s)
    found: RedisClients = _acquire(key, lambda: connect(url, socket_timeout_s=socket_timeout_s))
    return found


async def release(client: httpx.AsyncClient | RedisClients) -> None:
    """Give back a client from :func:`acquire_http` or :func:`acquire_redis`.

    :raises ValueError: the client is not one of them, or was released once too often.
    """
    with _lock:
        key = _keys.get(id(client))
        entry = None if key is None else _shared.get(key)
        if key is None or entry is None or entry[0] is not client:
            raise ValueError("release() of a client that is not shared, or already closed")
        entry[1] -= 1
        last = entry[1] == 0
        if last:
            del _shared[key]
            del _keys[id(client)]
    if last:
        await client.aclose()


def shared_count() -> int:
    """How many shared clients are open in this process (for tests and diagnostics)."""
    with _lock:
        return len(_shared)
