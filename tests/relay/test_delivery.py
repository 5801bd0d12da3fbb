"""End to end: real Redis, a relay, real HTTP receivers on 127.0.0.1 verifying each delivery
with the ``standardwebhooks`` library."""

import time

from tests.relay.servers import Receiver, Reply, Server, until


async def register(relay, receiver: Receiver, url: str, types=None):
    partner, secret = await relay.partners.register(url, types)
    receiver.secrets.append(secret)
    return partner


async def test_every_event_reaches_every_subscribed_partner_in_version_order(
    issuer, make_relay
) -> None:
    a, b, c = Receiver(), Receiver(), Receiver()
    async with Server(a) as sa, Server(b) as sb, Server(c) as sc, make_relay() as relay:
        await register(relay, a, sa.url + "/hooks")
        await register(relay, b, sb.url)
        await register(relay, c, sc.url, ["key-activated"])
        first = await issuer.add_key()
        await issuer.activate(first.kid)
        for _ in range(3):
            added = await issuer.add_key()
            await issuer.activate(added.kid)
        await until(lambda: len(a.accepted) == 8 and len(b.accepted) == 8 and len(c.got) == 4)

    for receiver in (a, b):
        assert [d.version for d in receiver.got] == list(range(1, 9))
        assert all(d.verified_by == [0] for d in receiver.got)
        assert len({d.webhook_id for d in receiver.got}) == 8
    assert [d.version for d in c.got] == [2, 4, 6, 8]
    assert {d.json["type"] for d in c.got} == {"keyherald.key-activated"}
    last = a.got[-1].json["data"]
    # The full current key set rides along with every event.
    assert last["version"] == 8 and last["jwks"]["keyherald"]["version"] == 8
    assert {k["kid"] for k in last["jwks"]["keys"]} == set(issuer.keys)
    assert last["jws"].count(".") == 2


async def test_receiver_failing_five_times_gets_everything_in_order_same_id(
    issuer, make_relay
) -> None:
    receiver = Receiver()
    receiver.script = [Reply(500)] * 3 + [Reply(502), Reply(404)]
    async with Server(receiver) as server, make_relay() as relay:
        partner = await register(relay, receiver, server.url)
        for _ in range(3):
            await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 3)

        async def recorded():
            return len(await relay.deliverer.store.attempts(partner.id)) == 8

        await until(recorded)
        attempts = await relay.deliverer.store.attempts(partner.id)

    assert [d.version for d in receiver.got] == [1] * 6 + [2, 3]
    assert len({d.webhook_id for d in receiver.got[:6]}) == 1
    assert all(d.verified_by == [0] for d in receiver.got)
    assert [d.version for d in receiver.accepted] == [1, 2, 3]
    oldest_first = attempts[::-1]
    assert [a["status"] for a in oldest_first] == ["500", "500", "500", "502", "404", "200"] + [
        "200"
    ] * 2
    assert [a["attempt"] for a in oldest_first[:6]] == ["1", "2", "3", "4", "5", "6"]
    assert oldest_first[0]["outcome"] == "retry" and oldest_first[5]["outcome"] == "delivered"
    assert all(float(a["latency_ms"]) >= 0 for a in attempts)


async def test_retry_after_on_503_is_honoured(issuer, make_relay) -> None:
    receiver = Receiver()
    receiver.script = [Reply(503, headers={"retry-after": "1"})]
    async with Server(receiver) as server, make_relay() as relay:
        await register(relay, receiver, server.url)
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 1)
    gap = receiver.got[1].at - receiver.got[0].at
    assert 0.95 <= gap < 3.0, gap


async def test_gone_disables_the_partner(issuer, make_relay) -> None:
    receiver = Receiver()
    receiver.script = [Reply(410)]
    async with Server(receiver) as server, make_relay() as relay:
        partner = await register(relay, receiver, server.url)
        await issuer.add_key()
        await until(lambda: len(receiver.got) == 1)

        async def disabled():
            return not (await relay.partners.get(partner.id)).enabled

        await until(disabled)
        assert (await relay.partners.get(partner.id)).disabled_reason == "gone"
        await issuer.add_key()
        # Nothing is sent to a gone endpoint until an operator enables it again.
        assert await relay.deliverer.store.depth(partner.id) == 1
        await relay.deliverer.enable(partner.id)
        await until(lambda: len(receiver.accepted) == 1)
    assert [d.version for d in receiver.got] == [1, 1]


async def test_exhausted_delivery_is_dead_lettered_and_the_next_goes(
    issuer, make_relay, redis
) -> None:
    receiver = Receiver()
    receiver.script = [Reply(500), Reply(500)]
    async with Server(receiver) as server, make_relay(schedule=[0, 0.02]) as relay:
        partner = await register(relay, receiver, server.url)
        await issuer.add_key()
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 1)
        dead = await redis.xrange(relay.deliverer.store.dead_key)
    assert [d.version for d in receiver.got] == [1, 1, 2]
    assert len(dead) == 1
    fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert fields["kind"] == "delivery" and fields["partner"] == partner.id
    assert fields["version"] == "1" and fields["attempts"] == "2"
    assert relay.metrics.dead_letters.labels("delivery", "status")._value.get() == 1


async def test_continuously_failing_partner_is_disabled(issuer, make_relay) -> None:
    receiver = Receiver()
    receiver.script = [Reply(500)] * 100
    async with (
        Server(receiver) as server,
        make_relay(schedule=[0] + [0.05] * 50, failure_disable_s=0.3) as relay,
    ):
        partner = await register(relay, receiver, server.url)
        started = time.monotonic()
        await issuer.add_key()

        async def disabled():
            return not (await relay.partners.get(partner.id)).enabled

        await until(disabled)
        elapsed = time.monotonic() - started
        record = await relay.partners.get(partner.id)
        sent = len(receiver.got)
        await issuer.add_key()
        await issuer.add_key()
    assert record.disabled_reason == "failing"
    assert 0.3 <= elapsed < 5.0
    assert len(receiver.got) == sent


async def test_newer_full_state_collapses_superseded_items(issuer, make_relay) -> None:
    receiver = Receiver()
    receiver.script = [Reply(500)]
    relay = make_relay(collapse=True)
    async with Server(receiver) as server:
        partner = await register(relay, receiver, server.url)
        for _ in range(3):
            await issuer.add_key()
        async with relay:
            await until(lambda: len(receiver.accepted) == 1)

            async def drained():
                return await relay.deliverer.store.depth(partner.id) == 0

            # The receiver saw the request before the relay saw the answer: wait for it.
            await until(drained)
            await issuer.add_key()
            await until(lambda: len(receiver.accepted) == 2)
    # v1 was retried; by then the key set was at v3, so v2 and v3 had nothing new to say.
    first = receiver.accepted[0].json["data"]
    assert first["event"]["version"] == 1 and first["version"] == 3
    assert relay.metrics.deliveries.labels(partner.id, "collapsed")._value.get() == 2
    assert [d.version for d in receiver.got] == [1, 1, 4]


async def test_replay_resends_from_a_version_with_new_ids(issuer, make_relay) -> None:
    receiver = Receiver()
    async with Server(receiver) as server, make_relay() as relay:
        partner = await register(relay, receiver, server.url)
        for _ in range(3):
            await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 3)
        from relay.consumer import read_history

        history = await read_history(relay.redis, relay.issuer, relay.announce_keys, 2)
        plan = await relay.deliverer.replay(partner.id, history)
        assert (plan.events, plan.deliveries, plan.versions) == (2, 2, [2, 3])
        await until(lambda: len(receiver.accepted) == 5)
    assert [d.version for d in receiver.got] == [1, 2, 3, 2, 3]
    assert len({d.webhook_id for d in receiver.got}) == 5


async def test_stale_jwks_is_retried_not_sent(issuer, make_relay) -> None:
    receiver = Receiver()
    issuer.jwks_lag = 1
    async with Server(receiver) as server, make_relay() as relay:
        partner = await register(relay, receiver, server.url)
        await issuer.add_key()
        await issuer.add_key()

        async def stale_seen():
            return any(
                a["error"] == "stale_keys" for a in await relay.deliverer.store.attempts(partner.id)
            )

        await until(stale_seen)
        # v1 went with the lagging v1 document; v2 cannot go with a v1 document.
        issuer.jwks_lag = 0
        await until(lambda: len(receiver.accepted) == 2)
    assert [d.json["data"]["version"] for d in receiver.got] == [1, 2]


async def test_secret_rotation_overlap_signs_with_both_then_only_the_new(
    issuer, make_relay
) -> None:
    receiver = Receiver()
    async with Server(receiver) as server, make_relay(secret_overlap_s=1.5) as relay:
        partner = await register(relay, receiver, server.url)
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 1)
        _, new = await relay.partners.rotate_secret(partner.id)
        receiver.secrets.append(new)
        rotated_at = time.monotonic()
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 2)
        assert time.monotonic() - rotated_at < 1.5
        await until(lambda: time.monotonic() - rotated_at > 1.6, timeout=3)
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 3)
    # old only; old and new during the overlap; new only after it.
    assert [d.verified_by for d in receiver.got] == [[0], [0, 1], [1]]


async def test_metrics_show_a_blocked_queue_and_its_recovery(issuer, make_relay) -> None:
    receiver = Receiver()
    receiver.script = [Reply(500)] * 3
    async with Server(receiver) as server, make_relay(schedule=[0, 0.3, 0.3, 0.3]) as relay:
        partner = await register(relay, receiver, server.url)
        m = relay.metrics
        await issuer.add_key()
        await issuer.add_key()
        await until(lambda: len(receiver.got) >= 2)
        # MiniIssuer stamps events at ts = version, so the oldest is decades old here.
        await until(lambda: m.queue_depth.labels(partner.id)._value.get() == 2)
        assert m.oldest_age.labels(partner.id)._value.get() > 1e9
        await until(lambda: len(receiver.accepted) == 2)
        await until(lambda: m.queue_depth.labels(partner.id)._value.get() == 0)
        assert m.oldest_age.labels(partner.id)._value.get() == 0
    assert m.attempts.labels(partner.id, "5xx")._value.get() == 3
    assert m.attempts.labels(partner.id, "2xx")._value.get() == 2
    assert m.deliveries.labels(partner.id, "retry")._value.get() == 3
    assert m.deliveries.labels(partner.id, "delivered")._value.get() == 2


def _events(delivery) -> list[tuple[str, int]]:
    return [(e["type"], e["version"]) for e in delivery.json["data"]["events"]]


async def test_a_revocation_reaches_a_partner_as_three_events_by_default(
    redis, issuer, jwks_http
) -> None:
    from relay.cli import build_relay
    from relay.keysource import SnapshotKeySource
    from relay.settings import RelaySettings
    from subscriber.jwks_client import JwksClient
    from tests.relay.conftest import ISSUER

    # Built as `keyherald relay` builds it, every setting at its default but the allow-list.
    settings = RelaySettings(issuer=ISSUER, admin_token="t" * 32, egress_allow=["127.0.0.1"])
    trusted = dict(issuer.announce_keys)
    keys = SnapshotKeySource(JwksClient(jwks_http, ISSUER), ISSUER, trusted)
    relay = build_relay(settings, redis, keys, trusted)  # type: ignore[arg-type]
    receiver = Receiver()
    first = await issuer.add_key()
    await issuer.activate(first.kid)
    await issuer.revoke(first.kid)  # a backlog: the relay starts after it
    async with Server(receiver) as server:
        await register(relay, receiver, server.url)
        async with relay:
            await until(lambda: len(receiver.accepted) == 5)
    assert [d.json["type"] for d in receiver.got[2:]] == [
        "keyherald.key-retired",
        "keyherald.key-added",
        "keyherald.key-activated",
    ]
    assert receiver.got[2].json["data"]["event"]["data"] == {"reason": "revoked"}
    # Each delivery stands for its own event only.
    assert all(d.json["data"]["events"] == [d.json["data"]["event"]] for d in receiver.got)


async def test_collapse_lists_what_it_stands_for_and_never_swallows_a_revocation(
    issuer, make_relay
) -> None:
    receiver = Receiver()
    first = await issuer.add_key()
    await issuer.activate(first.kid)
    await issuer.revoke(first.kid)
    await issuer.add_key()
    async with Server(receiver) as server:
        relay = make_relay(collapse=True)
        partner = await register(relay, receiver, server.url)
        async with relay:
            await until(lambda: len(receiver.accepted) == 3)
            collapsed = relay.metrics.deliveries.labels(partner.id, "collapsed")._value
            await until(lambda: collapsed.get() == 3)  # the answer to the last one is counted
            plan = await relay.deliverer.replay(partner.id, await _history(relay, 1))
            await until(lambda: len(receiver.accepted) == 3 + plan.deliveries)
    live, replayed = receiver.got[:3], receiver.got[3:]
    assert [_events(d) for d in live] == [
        [("key-added", 1), ("key-activated", 2)],
        [("key-retired", 3)],
        [("key-added", 4), ("key-activated", 5), ("key-added", 6)],
    ]
    assert [d.json["type"] for d in live] == [
        "keyherald.key-added",
        "keyherald.key-retired",
        "keyherald.key-added",
    ]
    assert all(d.json["data"]["version"] == 6 for d in live)
    # The replay says what it sends: 6 events as 3 deliveries, and that is what arrives.
    assert (plan.events, plan.deliveries) == (6, 3)
    assert [_events(d) for d in replayed] == [_events(d) for d in live]


async def _history(relay, from_version: int):
    from relay.consumer import read_history

    return await read_history(relay.redis, relay.issuer, relay.announce_keys, from_version)


async def test_a_collapsed_delivery_is_retried_with_the_same_events_and_id(
    issuer, make_relay
) -> None:
    receiver = Receiver()
    receiver.script = [Reply(500)]
    first = await issuer.add_key()
    await issuer.activate(first.kid)
    async with Server(receiver) as server:
        relay = make_relay(collapse=True, schedule=[0.0, 0.5])
        await register(relay, receiver, server.url)
        async with relay:
            await until(lambda: len(receiver.got) == 1)
            await issuer.add_key()  # arrives before the retry; it must not join that message
            await until(lambda: len(receiver.accepted) == 2)
    failed, retried, newer = receiver.got
    assert _events(failed) == _events(retried) == [("key-added", 1), ("key-activated", 2)]
    assert failed.webhook_id == retried.webhook_id != newer.webhook_id
    assert _events(newer) == [("key-added", 3)]


async def test_a_redirect_is_recorded_as_such_with_its_location(issuer, make_relay) -> None:
    receiver = Receiver()
    target = "https://elsewhere.example/in?token=s3cret"
    receiver.script = [Reply(302, headers={"location": target})] * 2
    async with Server(receiver) as server:
        relay = make_relay(schedule=[0.0, 0.05])
        partner = await register(relay, receiver, server.url + "/hooks")
        async with relay:
            await issuer.add_key()

            async def dead_lettered():
                return await relay.deliverer.store.dead_letters()

            await until(dead_lettered)
            attempts = await relay.deliverer.store.attempts(partner.id)
            (letter,) = await relay.deliverer.store.dead_letters()
    assert [a["error"] for a in attempts] == ["redirect", "redirect"]
    assert {a["location"] for a in attempts} == {"https://elsewhere.example/in"}
    assert letter["reason"] == "redirect" and letter["location"] == "https://elsewhere.example/in"
    assert "s3cret" not in str(attempts) + str(letter)
