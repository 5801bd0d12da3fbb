"""Sentinel over TLS (``rediss+sentinel://``): sentinels, primary and replicas serve TLS only
and replicate over it; the issuer writes through the sentinels' primary and a verifier reads
the stream from a replica (quick: runs in ``make test``)."""

from urllib.parse import urlencode

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from subscriber.clock import ManualClock
from subscriber.redis_conn import connect
from subscriber.redis_tls import tls_failure
from tests.certs import CertificateAuthority
from tests.ha.topology import SentinelTopology
from tests.subscriber.conftest import eventually, running_issuer

pytestmark = pytest.mark.timeout(60)


async def test_a_rotation_reaches_a_replica_reader_through_tls_sentinels(
    tls_sentinel_topology: SentinelTopology, clock: ManualClock
) -> None:
    topology = tls_sentinel_topology
    store = connect(topology.url(), setting="KEYHERALD_REDIS_URL")
    try:
        async with running_issuer(store.primary, clock) as issuer:
            url = topology.url(read_from="replica")
            verifier = await issuer.verifier(redis_url=url).__aenter__()
            assert verifier.health().state == "live"
            issuer.transport.down = True  # keys now reach the verifier by the stream only
            applied = await issuer.authority.rotate()
            kid = applied.events[-1].kid
            await eventually(lambda: kid in verifier.keyset.view.keys, what="key via a replica")
            await issuer.advance(issuer.settings.lead_s, tick=False)
            await issuer.authority.activate(kid)
            await eventually(lambda: verifier.keyset.view.states.get(kid) == "active")
            assert verifier.verify(await issuer.token())["sub"] == "u1"
    finally:
        await store.aclose()


async def test_sentinels_a_client_cannot_trust_are_refused(
    tls_sentinel_topology: SentinelTopology, tmp_path
) -> None:
    other = CertificateAuthority(tmp_path, "other CA").cert_file
    sentinels = tls_sentinel_topology.url().partition("?")[0]
    clients = connect(f"{sentinels}?{urlencode({'ssl_ca_certs': other})}")
    try:
        with pytest.raises(RedisConnectionError) as refused:
            await clients.primary.ping()
    finally:
        await clients.aclose()
    found = tls_failure(refused.value)
    assert found is not None and found.reason == "untrusted_certificate", refused.value
