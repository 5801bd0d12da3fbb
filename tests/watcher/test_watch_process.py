"""``keyherald watch`` as its own process against the stand-in IdP on uvicorn (127.0.0.1): the
request counts the IdP measures show the watcher polling no faster than the provider asks.

- ``max-age``: no JWKS request before the last response's freshness ran out;
- ``ETag``: every request after the first is conditional and answered ``304``, counted alike
  by the IdP and by the watcher's ``/healthz``;
- ``Retry-After``: after a ``429`` no request goes out before it passes, not even for the
  unknown-kid hints verifiers write meanwhile, although it is longer than the watcher's own
  backoff ceiling.

Real time, short durations (``max-age`` 1 s): lower bounds are exact (the IdP logs when it
answered), upper bounds are loose because the machine is shared.
"""

import asyncio
import base64
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import free_port
from keyherald.standin_idp import DISCOVERY_PATH, JWKS_PATH, StandInIdP
from subscriber.redis_keys import miss_hints

MAX_AGE_S = 1
CEILING_S = 1.0  # the watcher's own backoff never exceeds this
RETRY_AFTER_S = 3
JITTER = 0.1
SLACK_S = 1.0  # scheduling on a busy 2-core machine


@contextlib.asynccontextmanager
async def watch_process(
    redis_url: str, upstream: str, log: Path, **env_overrides: str
) -> AsyncIterator[str]:
    """``keyherald watch`` of ``upstream`` on ``redis_url``; yields its URL.

    :param env_overrides: more ``KEYHERALD_WATCH_*`` variables.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")} | {
        "KEYHERALD_WATCH_UPSTREAMS": upstream,
        "KEYHERALD_WATCH_KEK": base64.b64encode(os.urandom(32)).decode(),
        "KEYHERALD_WATCH_ALLOW_HTTP": "1",
        "KEYHERALD_WATCH_REDIS_URL": redis_url,
        "KEYHERALD_WATCH_POLL_FLOOR_S": "0.5",
        "KEYHERALD_WATCH_POLL_CEILING_S": str(CEILING_S),
        "KEYHERALD_WATCH_COOLDOWN_S": "0.5",
        "KEYHERALD_WATCH_TICK_INTERVAL_S": "0.2",
        **env_overrides,
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keyherald.cli", "watch", "--port", str(port),
            env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def upstream_status(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    try:
        response = await http.get(url + "/healthz")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    status: dict[str, Any] = response.json()["upstreams"][0]
    return status


async def until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def jwks_log(idp: StandInIdP) -> list[tuple[float, int]]:
    return [(t, status) for t, path, status in idp.log if path == JWKS_PATH]


@pytest.mark.timeout(90)
async def test_the_watch_process_obeys_max_age_etag_and_retry_after(
    redis_url: str, tmp_path: Path
) -> None:
    idp = StandInIdP(alg="ES256", max_age_s=MAX_AGE_S)
    async with (
        idp.serve() as issuer,
        watch_process(redis_url, issuer, tmp_path / "watch.log") as url,
        httpx.AsyncClient(timeout=2.0) as http,
    ):

        async def polled(n: int) -> bool:
            return len(jwks_log(idp)) >= n

        try:
            await until(lambda: polled(1), 30, "the first poll")
            # max-age and ETag: four more polls, each at least max-age after the last answer.
            await until(lambda: polled(5), 15, "four polls")
        except AssertionError:
            raise AssertionError(
                (tmp_path / "watch.log").read_text(errors="replace")[-3000:]
            ) from None
        quiet = jwks_log(idp)[:5]
        gaps = [b[0] - a[0] for a, b in zip(quiet, quiet[1:], strict=False)]
        assert min(gaps) >= MAX_AGE_S, gaps
        assert max(gaps) <= MAX_AGE_S * (1 + JITTER) + SLACK_S, gaps
        assert [s for _, s in quiet] == [200, 304, 304, 304, 304]

        # Retry-After: a 429 asking for 3 s, longer than the watcher's own 1 s ceiling; the
        # verifiers' unknown-kid hints that arrive meanwhile must not bring a request forward.
        idp.fail_next(429, retry_after=str(RETRY_AFTER_S))
        await until(lambda: polled(6), 5, "the 429")
        refused_at, status = jwks_log(idp)[5]
        assert status == 429
        redis = aioredis.Redis.from_url(redis_url)
        try:
            for i in range(20):
                await redis.xadd(miss_hints(issuer), {"kid": f"unknown-{i}", "instance": "t"})
                await asyncio.sleep(0.1)
        finally:
            await redis.aclose()
        await until(lambda: polled(7), RETRY_AFTER_S + SLACK_S + 2, "the poll after the 429")
        after, status = jwks_log(idp)[6]
        assert after - refused_at >= RETRY_AFTER_S, after - refused_at
        assert after - refused_at <= RETRY_AFTER_S * (1 + JITTER) + SLACK_S
        assert status == 304  # the ETag outlived the 429

        # The counts agree, request for request, between the IdP and the watcher (read again
        # if a poll fell between the two reads).
        for _ in range(20):
            status_now = await upstream_status(http, url)
            assert status_now is not None
            made = idp.requests[JWKS_PATH] + idp.requests[DISCOVERY_PATH]
            if status_now["upstream_requests"] == made:
                break
            await asyncio.sleep(0.05)
        assert status_now["upstream_requests"] == made
        assert status_now["not_modified"] == idp.not_modified >= 5
        assert idp.requests[DISCOVERY_PATH] == 1
        assert status_now["hints_read"] >= 20
        assert status_now["leading"] is True
