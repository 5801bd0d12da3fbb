"""``keyherald watch`` as a plain command on a Sentinel deployment (``redis+sentinel://``): it
writes through the primary the sentinels name, and a verifier reading the stream from a
replica receives a key the provider starts signing with (quick: runs in ``make test``)."""

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from keyherald.standin_idp import StandInIdP
from subscriber.errors import KeyNotFound
from subscriber.redis_keys import event_stream
from subscriber.verifier import Verifier
from tests.ha.topology import SentinelTopology
from tests.subscriber.test_redis_conn import burst
from tests.watcher.conftest import eventually
from tests.watcher.test_watch_process import upstream_status, watch_process

pytestmark = pytest.mark.timeout(60)


async def test_keyherald_watch_announces_through_sentinels(
    sentinel_topology: SentinelTopology, tmp_path: Path
) -> None:
    topology = sentinel_topology
    idp = StandInIdP(alg="ES256", max_age_s=1)
    log = tmp_path / "watch.log"
    async with (
        idp.serve() as issuer,
        watch_process(topology.url(), issuer, log) as url,
        httpx.AsyncClient(timeout=2.0) as http,
    ):

        async def leading() -> bool:
            status = await upstream_status(http, url)
            return status is not None and status["leading"] and bool(status["keys"])

        try:
            await eventually(leading, what="the watcher to lead and announce the first key")
        except AssertionError:
            raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
        primary = topology.primary()
        # The status lists the keys as soon as they are fetched; their commit follows.
        await eventually(
            lambda: primary.client().xlen(event_stream(issuer)) > 0,
            what="the first announcement on the primary's stream",
        )

        verifier = Verifier(
            issuer=issuer,
            audience="orders-api",
            redis_url=topology.url(read_from="replica"),
            announcer=url,
            registry=CollectorRegistry(),
            presence=False,
            miss_hint_interval_s=0.05,
        )
        async with verifier:
            assert verifier.health().state == "live"
            # A key the watcher has not announced yet: the verifier's miss hint goes to the
            # primary, the watcher fetches early and announces, and the key arrives on the
            # stream the verifier reads from a replica.
            kid = idp.rotate_at_once()
            token = idp.mint({"sub": "u1", "aud": "orders-api"})

            def verified() -> bool:
                try:
                    return verifier.verify(token)["sub"] == "u1"
                except KeyNotFound:
                    return False

            await eventually(verified, what="a token signed with the new key")
            assert kid in verifier.keyset.view.keys
        assert primary.client().xlen(event_stream(issuer)) > 1


async def test_a_sentinel_pool_that_waits_queues_a_burst(
    sentinel_topology: SentinelTopology,
) -> None:
    # The watcher's pool: a burst of verifiers' requests waits for a connection.
    url = sentinel_topology.url()
    assert await burst(url, pool_timeout_s=None) == ["Too many connections", "read"]
    assert await burst(url, pool_timeout_s=5.0) == ["read"]
