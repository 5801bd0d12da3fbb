"""The issue-11 crash reproduction: a real relay process is ``kill -9``-ed while it holds read
but unqueued stream entries, and a newer event arrives before they are reclaimed. Every
version still reaches the partner, in order, and the consumer group ends with nothing pending.

The relay is pinned at the exact step (entries read, fan-out not yet done) by a TCP proxy in
front of Redis that stops forwarding once the fan-out script is called. Repeat the runs with
``KEYHERALD_CRASH_RUNS=10``.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from keyherald.redis_server import free_port
from relay.egress import EgressPolicy
from relay.partners import PartnerStore
from relay.queue import _FAN_OUT
from subscriber.redis_keys import event_stream
from tests.relay.conftest import ISSUER, SNAPSHOT_URL
from tests.relay.servers import FreezingProxy, Receiver, Server, until

RUNS = range(int(os.environ.get("KEYHERALD_CRASH_RUNS", "1")))
BACKLOG = 12
#: Long enough for a restarted relay to start and queue a new event before the reclaim.
IDLE_S = 6
STREAM = event_stream(ISSUER)


@contextmanager
def relay_process(issuer, redis_url: str, jwks_url: str) -> Iterator[subprocess.Popen]:
    """``keyherald relay`` with the default consumer name (``<host>-<pid>``), short timings."""
    env = {
        **os.environ,
        "KEYHERALD_RELAY_ISSUER": ISSUER,
        "KEYHERALD_RELAY_REDIS_URL": redis_url,
        "KEYHERALD_RELAY_SNAPSHOT_URL": jwks_url,
        "KEYHERALD_RELAY_ANNOUNCEMENT_KEYS": json.dumps([issuer.announce_jwk]),
        "KEYHERALD_RELAY_ADMIN_TOKEN": "t" * 32,
        "KEYHERALD_RELAY_EGRESS_ALLOW": '["127.0.0.1"]',
        "KEYHERALD_RELAY_DELIVERY_TIMEOUT_S": "2",
        "KEYHERALD_RELAY_PARTNER_LEASE_S": "2.5",
        "KEYHERALD_RELAY_IDLE_BEFORE_CLAIM_S": str(IDLE_S),
        "KEYHERALD_RELAY_POLL_INTERVAL_S": "0.05",
        "KEYHERALD_RELAY_BLOCK_MS": "100",
    }
    env.pop("KEYHERALD_RELAY_CONSUMER", None)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "keyherald.cli", "relay", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    process.admin_port = port  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()


def _alive(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        err = process.stderr.read().decode() if process.stderr else ""
        raise AssertionError(f"relay exited {process.returncode}: {err[-2000:]}")


async def _pending(redis) -> int:
    return int((await redis.xpending(STREAM, "relay"))["pending"])


async def _consumers(redis) -> list[str]:
    return [c["name"].decode() for c in await redis.xinfo_consumers(STREAM, "relay")]


def _check(receiver: Receiver, versions: int) -> None:
    """Every version, in order; a repeat only ever with the same webhook-id."""
    ids: dict[int, set[str]] = {}
    for d in receiver.got:
        ids.setdefault(d.version, set()).add(d.webhook_id)
    assert all(len(i) == 1 for i in ids.values()), ids
    first_seen = list(dict.fromkeys(d.version for d in receiver.accepted))
    assert first_seen == list(range(1, versions + 1))
    attempts = [d.version for d in receiver.got]
    assert attempts == sorted(attempts)
    assert all(d.verified_by == [0] for d in receiver.got)


def _admin_up(process: subprocess.Popen):
    """Until the relay answers on its admin port (it listens once consuming has started)."""

    async def probe() -> bool:
        _alive(process)
        url = f"http://127.0.0.1:{process.admin_port}/healthz"  # type: ignore[attr-defined]
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(url)).is_success
        except httpx.TransportError:
            return False

    return probe


async def _add_and_wait_until_queued(redis, issuer) -> None:
    """Publish one event and wait until the group has read it and it is no longer pending."""
    await issuer.add_key()
    ((newest, _),) = await redis.xrevrange(STREAM, count=1)

    async def queued() -> bool:
        (group,) = await redis.xinfo_groups(STREAM)
        if group["last-delivered-id"] != newest:
            return False
        return not await redis.xpending_range(STREAM, "relay", newest, newest, 1)

    await until(queued, timeout=10)


async def _frozen_with_backlog(redis, proxy: FreezingProxy, process: subprocess.Popen) -> None:
    async def pinned() -> bool:
        _alive(process)
        return proxy.frozen.is_set() and await _pending(redis) == BACKLOG

    await until(pinned, timeout=20)


async def _everything_arrives(redis, receiver: Receiver, versions: int, *processes) -> None:
    async def settled() -> bool:
        for process in processes:
            _alive(process)
        return len({d.version for d in receiver.accepted}) == versions

    await until(settled, timeout=30)
    assert await _pending(redis) == 0

    async def cleaned_up() -> bool:  # the dead replica's consumer name is removed
        return len(await _consumers(redis)) == len(processes)

    await until(cleaned_up, timeout=15)
    _check(receiver, versions)


@pytest.fixture
async def setup(redis, redis_url, issuer):
    """A partner registered, a JWKS server, a proxy that pins a relay before its fan-out, and
    a backlog of events published while no relay runs."""
    receiver = Receiver()
    sha = hashlib.sha1(_FAN_OUT.encode()).hexdigest().encode()
    async with (
        Server(issuer.app) as jwks,
        Server(receiver) as partner,
        FreezingProxy(urlsplit(redis_url).port, sha) as proxy,
    ):
        policy = EgressPolicy.from_strings(["127.0.0.1"])
        store = PartnerStore(redis, ISSUER, overlap_s=0, policy=policy)
        _, secret = await store.register(partner.url)
        receiver.secrets.append(secret)
        for _ in range(BACKLOG):
            await issuer.add_key()
        yield receiver, proxy, SNAPSHOT_URL.replace(ISSUER, jwks.url)


@pytest.mark.parametrize("run", RUNS)
async def test_a_killed_replica_restarted_under_its_default_name_loses_nothing(
    run, redis, redis_url, issuer, setup
) -> None:
    receiver, proxy, jwks_url = setup
    with relay_process(issuer, proxy.url, jwks_url) as doomed:
        await _frozen_with_backlog(redis, proxy, doomed)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    with relay_process(issuer, redis_url, jwks_url) as restarted:
        await until(_admin_up(restarted), timeout=20)
        await _add_and_wait_until_queued(redis, issuer)
        # The race of the issue: the new event is queued while the dead replica's entries
        # still wait to be reclaimed. It must go after them, not instead of them.
        assert await _pending(redis) == BACKLOG
        await _everything_arrives(redis, receiver, BACKLOG + 1, restarted)


@pytest.mark.parametrize("run", RUNS)
async def test_a_peer_reclaiming_a_killed_replicas_entries_loses_nothing(
    run, redis, redis_url, issuer, setup
) -> None:
    receiver, proxy, jwks_url = setup
    with relay_process(issuer, proxy.url, jwks_url) as doomed:
        await _frozen_with_backlog(redis, proxy, doomed)
        with relay_process(issuer, redis_url, jwks_url) as peer:
            await until(_admin_up(peer), timeout=20)
            # Both replicas run; the peer takes new events while the other holds the backlog.
            await _add_and_wait_until_queued(redis, issuer)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            await _add_and_wait_until_queued(redis, issuer)
            assert await _pending(redis) == BACKLOG
            await _everything_arrives(redis, receiver, BACKLOG + 2, peer)
