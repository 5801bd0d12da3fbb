"""The ``confirmed`` activation gate with real processes: a paused verifier holds an activation
back, and its recovery releases it (issue 6).

One verifier process is frozen (SIGSTOP) before a new key is published, so it cannot learn of
the key; its last heartbeat stays live (TTL longer than the pause). The issuer must leave the
key pending past its planned time and name the frozen instances as lagging; once the process
resumes, it reads the event, its next heartbeat lists the key, and the issuer activates it.
"""

import dataclasses
import time
from typing import Any

import pytest

from keyherald.redis_server import find_redis_server
from subscriber.presence import live_verifiers

from .harness import QUICK, Cluster, wait_for

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="needs a redis-server binary")

GATED = dataclasses.replace(
    QUICK,
    # No automatic rotation during the test: the test publishes the key itself.
    rotation_period_s=600.0,
    activation_gate="confirmed",
    gate_max_wait_s=120.0,
    # Heartbeat TTL is 3 x 4 s: the frozen worker stays live for the whole pause.
    heartbeat_s=4.0,
)
#: How long past its planned activation the key must stay held while the worker is frozen.
HELD_FOR_S = 1.5


async def _readiness(cluster: Cluster, kid: str) -> dict[str, Any]:
    response = await cluster.http.get(
        f"{cluster.issuer_url}/admin/keys/{kid}/readiness", headers=cluster.admin
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def _state(cluster: Cluster, kid: str) -> str:
    return next(k["state"] for k in await cluster.keys() if k["kid"] == kid)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [GATED], indirect=True, ids=["gated"])
async def test_paused_verifier_holds_activation_until_it_resumes(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    await cluster.start()
    await cluster.settle("start", partner=False)
    frozen = cluster.worker_names[0]
    frozen_ids = {i["instance_id"] for i in (await cluster.worker_state(frozen))["instances"]}
    # A heartbeat written just before the freeze: the TTL then counts from about now.
    since = time.time()
    await wait_for(
        "a fresh heartbeat from every instance",
        lambda: _all_beat_after(cluster, since),
        timeout_s=15.0,
    )
    cluster.procs[frozen].freeze()
    try:
        response = await cluster.http.post(
            f"{cluster.issuer_url}/admin/rotate", headers=cluster.admin
        )
        response.raise_for_status()
        kid = response.json()["events"][0]["kid"]
        planned = next(k["activate_at"] for k in await cluster.keys() if k["kid"] == kid)

        async def held_past_plan() -> bool:
            return time.time() > planned + HELD_FOR_S

        await wait_for("the planned activation to pass", held_past_plan, timeout_s=30.0)
        ready = await _readiness(cluster, kid)
        assert await _state(cluster, kid) == "pending"
        assert ready["activation_held"] is True
        assert set(ready["lagging"]) == frozen_ids
        holders = {v["instance_id"] for v in ready["verifiers"] if v["holds"]}
        assert holders and not holders & frozen_ids
    finally:
        cluster.procs[frozen].thaw()
    resumed = time.time()

    async def activated() -> bool:
        return await _state(cluster, kid) == "active"

    took = await wait_for("the held key to activate", activated, timeout_s=30.0)
    assert (await _readiness(cluster, kid))["ready"] is True
    with capsys.disabled():
        print(
            f"\nconfirmed gate: key held {resumed - planned:.2f} s past its planned activation "
            f"while {frozen} was paused; activated {took:.2f} s after it resumed"
        )


async def _all_beat_after(cluster: Cluster, since: float) -> bool:
    async with cluster.redis_client() as client:
        records = await live_verifiers(client, cluster.issuer_url, time.time())
    ids = {r["instance_id"] for r in records}
    expected = cluster.timing.workers * cluster.timing.instances_per_worker
    return len(ids) == expected and all(r["updated_at"] >= since for r in records)
