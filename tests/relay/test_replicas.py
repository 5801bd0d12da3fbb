"""Several replicas at once: per-partner version order holds, nothing is lost."""

import asyncio

from subscriber.redis_keys import issuer_tag
from tests.relay.conftest import ISSUER
from tests.relay.servers import Receiver, Reply, Server, until


def _once(receiver: Receiver) -> list:
    """Accepted deliveries, first of each ``webhook-id``: what a Standard Webhooks receiver
    processes. (A replica stalled past its lease can repeat an item; the id stays the same.)"""
    seen: dict[str, object] = {}
    for d in receiver.accepted:
        seen.setdefault(d.webhook_id, d)
    return list(seen.values())


async def test_three_replicas_keep_order_per_partner(redis, issuer, make_relay) -> None:
    receivers = [Receiver() for _ in range(3)]
    # One partner flaps, so its queue moves between retries while others keep flowing.
    receivers[1].script = [Reply(500), Reply(200), Reply(503), Reply(500)]
    replicas = [make_relay(consumer=f"relay-{i}") for i in range(3)]
    async with (
        Server(receivers[0]) as s0,
        Server(receivers[1]) as s1,
        Server(receivers[2]) as s2,
    ):
        for receiver, server in zip(receivers, (s0, s1, s2), strict=True):
            _, secret = await replicas[0].partners.register(server.url)
            receiver.secrets.append(secret)
        for relay in replicas:
            await relay.start()
        try:
            for _ in range(10):
                added = await issuer.add_key()
                await issuer.activate(added.kid)
                await asyncio.sleep(0.005)
            await until(lambda: all(len(_once(r)) == 20 for r in receivers), timeout=30)
        finally:
            for relay in replicas:
                await relay.aclose()
    for receiver in receivers:
        assert [d.version for d in _once(receiver)] == list(range(1, 21))
        assert all(d.verified_by == [0] for d in receiver.got)
    # Attempts in order too: a retry is always of the oldest undelivered version.
    attempts = [d.version for d in receivers[1].got]
    assert attempts == sorted(attempts)
    # Every key the relay wrote sits on the issuer's Cluster slot.
    tag = "{" + issuer_tag(ISSUER) + "}"
    assert all(tag in key.decode() for key in await redis.keys("*"))
