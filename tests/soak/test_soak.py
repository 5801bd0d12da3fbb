"""Soak and fault suite (issue 6): rotation under load while faults are injected one by one.

The quick variant runs every fault once with a policy that rotates every 3 s; the long one
(``make soak``) repeats the fault cycle until 50 rotations. Both print the report and write it
as JSON to ``$KEYHERALD_SOAK_REPORT`` or, by default, the test's tmp dir.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from keyherald.redis_server import find_redis_server

from . import report
from .faults import Faults
from .harness import LONG, QUICK, Cluster
from .loadgen import LoadGenerator

#: One cycle, in the issue's order.
FAULTS = (
    "redis_restart",
    "redis_flush",
    "stream_trim",
    "redis_pause",
    "issuer_kill",
    "verifier_kill",
    "relay_kill",
    "partner_down",
)

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="needs a redis-server binary")


async def run_soak(cluster: Cluster) -> dict[str, Any]:
    """Start everything, run fault cycles until enough rotations, return the report."""
    await cluster.start()
    load = LoadGenerator(cluster)
    faults = Faults(cluster, load)
    started_at = time.time()
    load.start()
    try:
        await cluster.settle("start")
        while True:
            await faults.revoke_active()
            for name in FAULTS:
                await faults.run(name)
            if cluster.rotations() >= cluster.timing.rotations_wanted:
                break
    finally:
        await load.stop()
    await cluster.settle("the end of the load")
    return report.build(cluster, load, faults, started_at, time.time())


def publish(result: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = Path(os.environ.get("KEYHERALD_SOAK_REPORT") or tmp_path / "soak-report.json")
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
    with capsys.disabled():
        print(f"\n--- soak report ({path}) ---\n{report.summary(result)}")
    return path


def check(result: dict[str, Any], wanted_rotations: int) -> None:
    assert result["valid_rejected"] == 0, result["valid_rejections"]
    assert result["deliveries"]["lost"] == 0, result["deliveries"]["lost_events"]
    assert result["stream"]["duplicate_versions"] == 0
    assert result["stream"]["broken_chain"] == []
    kills = [f for f in result["faults"] if f["name"] == "issuer_kill" and "planned_kid" in f]
    assert all(f["activations_of_planned_kid"] == 1 for f in kills), kills
    assert result["rotations"] >= wanted_rotations
    assert result["tokens"]["verified"] > 0
    assert len(result["faults"]) >= len(FAULTS)
    assert result["revocations"], "no revocation was timed"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cluster", [QUICK], indirect=True, ids=["quick"])
async def test_quick_soak(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await run_soak(cluster)
    publish(result, tmp_path, capsys)
    check(result, QUICK.rotations_wanted)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("cluster", [LONG], indirect=True, ids=["long"])
async def test_long_soak(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await run_soak(cluster)
    publish(result, tmp_path, capsys)
    check(result, LONG.rotations_wanted)
