"""A relay killed mid-delivery loses nothing: a peer (or the restarted replica) sends the same
message again, with the same ``webhook-id``, once the dead replica's lease has expired."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from keyherald.redis_server import free_port
from relay.egress import EgressPolicy
from relay.partners import PartnerStore
from tests.relay.conftest import ISSUER, SNAPSHOT_URL
from tests.relay.servers import Receiver, Reply, Server, until


async def test_sigkilled_relay_process_loses_nothing(redis, redis_url, issuer, make_relay) -> None:
    receiver = Receiver()
    # The first delivery hangs: the relay process is killed while it waits for the answer.
    receiver.script = [Reply(503, delay_s=3.0)]
    async with Server(issuer.app) as jwks_server, Server(receiver) as server:
        local = EgressPolicy.from_strings(["127.0.0.1"])
        store = PartnerStore(redis, ISSUER, overlap_s=0, policy=local)
        partner, secret = await store.register(server.url)
        receiver.secrets.append(secret)
        env = {
            **os.environ,
            "KEYHERALD_RELAY_ISSUER": ISSUER,
            "KEYHERALD_RELAY_REDIS_URL": redis_url,
            "KEYHERALD_RELAY_SNAPSHOT_URL": SNAPSHOT_URL.replace(ISSUER, jwks_server.url),
            "KEYHERALD_RELAY_ANNOUNCEMENT_KEYS": json.dumps([issuer.announce_jwk]),
            "KEYHERALD_RELAY_ADMIN_TOKEN": "t" * 32,
            "KEYHERALD_RELAY_EGRESS_ALLOW": '["127.0.0.1"]',
            "KEYHERALD_RELAY_CONSUMER": "relay-doomed",
            "KEYHERALD_RELAY_DELIVERY_TIMEOUT_S": "2",
            "KEYHERALD_RELAY_PARTNER_LEASE_S": "2.5",
            "KEYHERALD_RELAY_IDLE_BEFORE_CLAIM_S": "3",
            "KEYHERALD_RELAY_POLL_INTERVAL_S": "0.05",
            "KEYHERALD_RELAY_BLOCK_MS": "100",
        }
        await issuer.add_key()
        await issuer.add_key()
        doomed = subprocess.Popen(
            [sys.executable, "-m", "keyherald.cli", "relay", "--port", str(free_port())],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await until(lambda: len(receiver.got) == 1 or doomed.poll() is not None, timeout=20)
            assert doomed.poll() is None, doomed.stderr.read().decode() if doomed.stderr else ""
            doomed.send_signal(signal.SIGKILL)
        finally:
            doomed.kill()
            doomed.wait()
            if doomed.stderr:
                doomed.stderr.close()
        killed_at = time.monotonic()
        async with make_relay(consumer="relay-peer"):
            await until(lambda: len(receiver.accepted) == 2, timeout=10)
        taken_over_after = time.monotonic() - killed_at

    first, retried, second = receiver.got
    assert [d.version for d in receiver.got] == [1, 1, 2]
    assert first.webhook_id == retried.webhook_id
    assert all(d.verified_by == [0] for d in receiver.got)
    # Nobody else may deliver to the partner while the dead replica's lease still runs.
    assert taken_over_after < 2.5 + 3.0


async def test_cancelled_relay_task_loses_nothing(issuer, make_relay) -> None:
    receiver = Receiver()
    receiver.script = [Reply(503, delay_s=2.0)]
    async with Server(receiver) as server:
        first = make_relay(consumer="relay-a")
        partner, secret = await first.partners.register(server.url)
        receiver.secrets.append(secret)
        await issuer.add_key()
        await first.start()
        await until(lambda: len(receiver.got) == 1)
        await first.aclose()  # cancelled mid-request, nothing acknowledged as delivered
        async with make_relay(consumer="relay-b"):
            await until(lambda: len(receiver.accepted) == 1)
        await asyncio.sleep(0)
    assert [d.webhook_id for d in receiver.got] == [receiver.got[0].webhook_id] * 2
