"""Cluster: ``CLUSTER FAILOVER`` of the shard holding the issuer's hash tag, during rotations
under load. The issuer, the verifiers (two reading the slot's replicas) and the relay follow
the slot to its new master without a restart."""

import asyncio
import time

import pytest

from subscriber.redis_keys import event_stream
from tests.ha.harness import ISSUER, Harness, running
from tests.ha.test_sentinel import _assert_recovered, _converged
from tests.ha.topology import ClusterTopology, Node

pytestmark = [
    pytest.mark.ha,
    pytest.mark.timeout(240),
    # Connections redis-py abandons to a dead primary are closed by the GC (see harness.py).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


async def test_failover_of_the_issuers_shard_during_rotations(
    cluster_topology: ClusterTopology,
) -> None:
    topology = cluster_topology
    url, replicas = topology.url(), topology.url(read_from="replica")
    async with Harness(url, replicas) as harness:
        async with running(harness):
            await harness.rotate_once()
            master, replica = topology.owner(event_stream(ISSUER))
            rotation = asyncio.create_task(harness.rotate_once())
            await asyncio.sleep(2.0)
            await asyncio.to_thread(replica.client().execute_command, "CLUSTER", "FAILOVER")
            await asyncio.to_thread(_wait_promoted, master)
            await rotation
            await harness.rotate_once()
            await _converged(harness)
        await _assert_recovered(harness)


def _wait_promoted(old: Node) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if old.client().execute_command("ROLE")[0] == "slave":
            return
        time.sleep(0.05)
    raise AssertionError("the replica was not promoted")
