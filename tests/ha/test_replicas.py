"""Fan-out from replicas, refusals and durability, on small real topologies (quick: these run
in ``make test``)."""

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from issuer.app import create_app
from keyherald.redis_server import find_redis_server
from subscriber import Verifier
from subscriber.presence import live_verifiers
from tests.ha.harness import ADMIN, AUDIENCE, ISSUER, settings
from tests.ha.topology import Node, _server_args, _until, replicas_streaming
from tests.subscriber.conftest import eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """A primary and one replica."""
    binary = find_redis_server()
    assert binary is not None
    root = Path(tempfile.mkdtemp(prefix="keyherald-replicas-"))
    started: list[Node] = []
    try:
        started.append(Node(binary, root, "primary", _server_args()).start())
        args = [*_server_args(), "--replicaof", "127.0.0.1", str(started[0].port)]
        started.append(Node(binary, root, "replica", args).start())
        _until(lambda: replicas_streaming(started[0], 1), "the replica streaming")
        yield started
    finally:
        for node in started:
            node.kill()
        shutil.rmtree(root, ignore_errors=True)


async def _issuer(url: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    # One issuer per test: the issuer keeps a per-process memory of each issuer's history,
    # and every test here starts a fresh store.
    app = create_app(settings=settings(url, **overrides), run_scheduler=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        http.app = app  # type: ignore[attr-defined]
        yield http


def _verifier(url: str, http: httpx.AsyncClient, **options: object) -> Verifier:
    return Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        redis_url=url,
        http_client=http,
        registry=CollectorRegistry(),
        block_ms=200,
        heartbeat_interval_s=0.2,
        **options,  # type: ignore[arg-type]
    )


async def _xreads(node: Node) -> int:
    client = aioredis.Redis(port=node.port)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


async def _live(node: Node, now: float) -> list[str]:
    client = aioredis.Redis(port=node.port)
    try:
        return [r["instance_id"] for r in await live_verifiers(client, ISSUER, now)]
    finally:
        await client.aclose()


async def test_stream_from_the_listed_replica_heartbeats_on_the_primary(nodes) -> None:
    primary, replica = nodes
    url = f"redis://{primary.address}/0"
    async for http in _issuer(url):
        async with _verifier(f"{url}?replicas={replica.address}", http) as verifier:
            added = await http.post("/admin/rotate", headers=ADMIN)
            kid = added.json()["events"][0]["kid"]
            await eventually(lambda k=kid: k in verifier.health().kids, what="the new key")
            # Nothing but the verifier talks to the replica (the issuer reads its own stream
            # on the primary).
            assert await _xreads(replica) > 0

            async def listed(clock=http.app.state.authority.clock) -> bool:  # type: ignore[attr-defined]
                return await _live(primary, clock()) == [verifier.instance_id]

            # The first heartbeat and the key travel apart: neither waits for the other.
            await eventually(listed, what="the heartbeat on the primary")
            assert verifier.health().heartbeat_error is None


async def test_a_verifier_refused_by_maxclients_says_so(nodes, caplog) -> None:
    primary, _ = nodes
    url = f"redis://{primary.address}/0"
    async for http in _issuer(url):
        assert (await http.get("/.well-known/openid-configuration")).status_code == 200
        hog = aioredis.Redis(port=primary.port)
        connected = (await hog.info("clients"))["connected_clients"]
        # Room for the issuer and this client only (the replica's link counts too).
        await hog.config_set("maxclients", connected)
        try:
            caplog.set_level(logging.WARNING, "subscriber")
            async with _verifier(url, http) as verifier:
                await eventually(
                    lambda: verifier.health().heartbeat_error is not None, what="the refusal"
                )
                health = verifier.health()
                assert health.state != "live"
                assert health.redis_error is not None and "maxclients" in health.redis_error
                assert "max number of clients" in (health.heartbeat_error or "")
                assert "maxclients" in caplog.text
        finally:
            await hog.config_set("maxclients", 2000)
            await hog.aclose()


async def test_a_transition_no_replica_holds_is_a_503(nodes) -> None:
    primary, replica = nodes
    url = f"redis://{primary.address}/0"
    async for http in _issuer(url, min_replicas=1, min_replicas_timeout_s=0.3):
        # A replica just synced can take a moment to acknowledge on a busy machine.
        for _ in range(20):
            status = (await http.post("/admin/rotate", headers=ADMIN)).status_code
            if status == 201:
                break
            assert status == 503
            await asyncio.sleep(0.25)
        assert status == 201
        replica.kill()
        refused = await http.post("/admin/rotate", headers=ADMIN)
        assert refused.status_code == 503 and refused.json()["error"] == "not_replicated"
        assert refused.headers["Retry-After"]


async def _until_acknowledged(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    # A replica just synced (or resumed) can take a moment to acknowledge on a busy machine.
    for _ in range(20):
        answer = await http.post("/admin/rotate", headers=headers)
        if answer.status_code != 503:
            return answer
        assert answer.json()["error"] == "not_replicated"
        await asyncio.sleep(0.25)
    return answer


async def test_a_retry_of_a_rotation_no_replica_acknowledged_is_answered_once_one_holds_it(
    nodes,
) -> None:
    """KEYHERALD_MIN_REPLICAS: a rotation the replica has not acknowledged answers 503 but is
    made on the primary. Its retry under the same Idempotency-Key, here through a second issuer
    whose connections wrote nothing, is a 503 as long as no replica holds the rotation, then
    the rotation's own answer: one key added."""
    primary, replica = nodes
    url = f"redis://{primary.address}/0"
    durable = {"min_replicas": 1, "min_replicas_timeout_s": 0.3}
    headers = {**ADMIN, "Idempotency-Key": "rotate-after-incident"}
    async for first in _issuer(url, **durable):
        assert (await _until_acknowledged(first, ADMIN)).status_code == 201
        async for second in _issuer(url, **durable):
            before = (await second.get("/admin/keys", headers=ADMIN)).json()
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                lost = await first.post("/admin/rotate", headers=headers)
                assert lost.status_code == 503 and lost.json()["error"] == "not_replicated"
                early = await second.post("/admin/rotate", headers=headers)
                assert early.status_code == 503 and early.json()["error"] == "not_replicated"
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            answered = await _until_acknowledged(second, headers)
            assert answered.status_code == 201
            assert answered.headers["idempotent-replayed"] == "true"
            keys = (await second.get("/admin/keys", headers=ADMIN)).json()
            assert len(keys) == len(before) + 1
            assert answered.json()["events"][0]["kid"] == keys[-1]["kid"]


async def test_a_dead_listed_replica_moves_the_stream_to_the_next_address(nodes) -> None:
    primary, replica = nodes
    url = f"redis://{primary.address}/0"
    async for http in _issuer(url):
        async with _verifier(f"{url}?replicas={replica.address}", http) as verifier:
            replica.kill()
            added = await http.post("/admin/rotate", headers=ADMIN)
            kid = added.json()["events"][0]["kid"]
            await eventually(
                lambda k=kid: k in verifier.health().kids and verifier.health().state == "live",
                timeout_s=10.0,
                what="the key, live, from the primary",
            )
