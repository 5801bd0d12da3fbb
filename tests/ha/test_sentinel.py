"""Sentinel: ``kill -9`` of the primary during rotations under load. Nothing restarts: the
issuer, the verifiers (two reading from replicas) and the relay follow the new primary."""

import asyncio

import pytest

from subscriber.redis_keys import meta_hash
from tests.ha.harness import ISSUER, Harness, running, until
from tests.ha.topology import SentinelTopology

pytestmark = [
    pytest.mark.ha,
    pytest.mark.timeout(240),
    # Connections redis-py abandons to a dead primary are closed by the GC (see harness.py).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


async def test_kill_9_of_the_primary_during_rotations(sentinel_topology: SentinelTopology) -> None:
    topology = sentinel_topology
    url, replicas = topology.url(), topology.url(read_from="replica")
    # WAIT for one replica: what survives a kill -9 as long as Sentinel promotes a replica
    # that holds the write (it picks by the offsets it last saw, which can be a second old).
    async with Harness(url, replicas, min_replicas=1) as harness:
        async with running(harness):
            await harness.rotate_once()
            old = topology.primary()
            # Published on the old primary, activated on the new one.
            rotation = asyncio.create_task(harness.rotate_once())
            await asyncio.sleep(2.0)
            held = max(v.health().version for v in harness.verifiers)
            old.kill()
            new = await asyncio.to_thread(topology.wait_failover, old)
            kept = int(new.client().hget(meta_hash(ISSUER), "version") or 0)
            await rotation
            await harness.rotate_once()
            # A write Sentinel's choice of replica lost (v{held} held by verifiers, v{kept}
            # kept, or a follower saw the stream go backwards) is restored by the issuer's
            # high-water mark as the next version: no valid token may be rejected for it.
            harness.tally.lost_writes = kept < held or harness.lost.count > 0
            await _converged(harness)
        await _assert_recovered(harness)


async def _converged(harness: Harness) -> None:
    versions = await harness.stream_versions()
    last = versions[-1]

    def caught_up() -> bool:
        return all(
            v.health().state == "live" and v.health().version == last for v in harness.verifiers
        )

    await until(caught_up, 30, f"every verifier live at version {last}")
    await until(
        lambda: any(d.json["data"]["version"] >= last for d in harness.receiver.accepted),
        30,
        f"the relay delivering version {last}",
    )


async def _assert_recovered(harness: Harness) -> None:
    tally = harness.tally
    versions = await harness.stream_versions()
    assert versions == list(range(1, len(versions) + 1)), versions
    assert tally.rejected == [], tally.rejected[:5]
    assert tally.rotations == 3
    assert 500 not in tally.admin, (tally.admin, tally.errors)
    assert tally.minted > 50 and tally.verified == 3 * tally.minted
    assert all(v.health().heartbeat_error is None for v in harness.verifiers)
