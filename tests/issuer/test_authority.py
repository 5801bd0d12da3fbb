"""The authority against a real Redis: bootstrap, operator actions, events on the stream."""

import pytest
import redis.asyncio as aioredis

from issuer.authority import Authority
from issuer.errors import IllegalTransition, UnknownKey
from subscriber.clock import ManualClock
from tests.issuer.helpers import replay, states, stream_events

DAY_S = 86_400


async def _active(authority: Authority) -> str:
    return next(k.kid for k in await authority.keys() if k.state == "active")


async def test_bootstrap_makes_exactly_one_active_key(
    authority: Authority, redis: aioredis.Redis
) -> None:
    keys = await authority.keys()
    assert [k.state for k in keys] == ["active"]
    events = await stream_events(redis, authority)
    assert [(e.type, e.version) for e in events] == [("key-added", 1), ("key-activated", 2)]
    assert events[0].data["jwk"]["kid"] == keys[0].kid
    # The announced plan is the record's plan: signs now, leaves after period + grace.
    assert events[0].data["activate_at"] == keys[0].activated_at == events[0].ts
    assert events[0].data["retire_at"] == keys[0].retire_at == events[0].ts + 97 * DAY_S
    assert events[1].data["previous_kid"] is None


async def test_bootstrap_twice_is_one_store(authority: Authority, redis: aioredis.Redis) -> None:
    first = await authority.bootstrap()
    second = await authority.bootstrap()
    assert (first.epoch, first.version) == (second.epoch, second.version) == (first.epoch, 2)


async def test_rotation_cycle_announces_each_step_in_order(
    authority: Authority, redis: aioredis.Redis, clock: ManualClock
) -> None:
    old = await _active(authority)
    added = await authority.rotate()
    new = added.events[0].kid
    assert states(await authority.keys()) == {old: "active", new: "pending"}
    with pytest.raises(IllegalTransition, match="may sign from"):
        await authority.activate(new)  # not published for the lead yet
    clock.advance(6 * DAY_S)
    await authority.tick()
    assert states(await authority.keys()) == {old: "retiring", new: "active"}
    clock.advance(7 * DAY_S)
    await authority.tick()
    assert states(await authority.keys()) == {old: "retired", new: "active"}

    events = await stream_events(redis, authority)
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    assert [(e.type, e.kid) for e in events[2:]] == [
        ("key-added", new), ("key-activated", new), ("key-retired", old),
    ]  # fmt: skip
    assert events[3].data["previous_kid"] == old
    assert events[4].data["reason"] == "expired"
    assert replay(events) == states(await authority.keys())
    assert (await authority.store.head())[1] == events[-1].version


async def test_operator_activate_after_lead(authority: Authority, clock: ManualClock) -> None:
    old = await _active(authority)
    new = (await authority.rotate()).events[0].kid
    clock.advance(6 * DAY_S)
    applied = await authority.activate(new)
    assert applied.events[0].data["previous_kid"] == old
    assert applied.events[0].data["previous_retire_at"] == clock() + 7 * DAY_S
    with pytest.raises(IllegalTransition):
        await authority.activate(new)


async def test_retire_rules(authority: Authority, clock: ManualClock) -> None:
    old = await _active(authority)
    with pytest.raises(IllegalTransition, match="active"):
        await authority.retire(old)
    pending = (await authority.rotate()).events[0].kid
    await authority.retire(pending)  # withdrawing a key that never signed is harmless
    assert states(await authority.keys())[pending] == "retired"
    with pytest.raises(IllegalTransition, match="already retired"):
        await authority.retire(pending)
    with pytest.raises(UnknownKey):
        await authority.retire("no-such-kid")


async def test_retiring_key_cannot_be_retired_during_its_grace(
    authority: Authority, clock: ManualClock
) -> None:
    old = await _active(authority)
    new = (await authority.rotate()).events[0].kid
    clock.advance(6 * DAY_S)
    await authority.activate(new)
    with pytest.raises(IllegalTransition, match="[Rr]evoke"):
        await authority.retire(old)
    clock.advance(7 * DAY_S)
    await authority.retire(old)
    assert states(await authority.keys())[old] == "retired"


async def test_revoke_active_with_pending_activates_it_at_once(
    authority: Authority, redis: aioredis.Redis
) -> None:
    old = await _active(authority)
    pending = (await authority.rotate()).events[0].kid
    applied = await authority.revoke(old)
    assert [(e.type, e.kid) for e in applied.events] == [
        ("key-retired", old), ("key-activated", pending),
    ]  # fmt: skip
    assert applied.events[0].data == {"reason": "revoked"}
    assert applied.events[1].data["previous_kid"] is None
    assert states(await authority.keys()) == {old: "revoked", pending: "active"}
    assert replay(await stream_events(redis, authority)) == states(await authority.keys())


async def test_revoke_active_without_pending_generates_one(
    authority: Authority, redis: aioredis.Redis
) -> None:
    old = await _active(authority)
    applied = await authority.revoke(old)
    assert [e.type for e in applied.events] == ["key-retired", "key-added", "key-activated"]
    assert [e.version for e in applied.events] == [3, 4, 5]
    new = applied.events[1].kid
    assert states(await authority.keys()) == {old: "revoked", new: "active"}
    jwks = (await authority.jwks()).json()
    assert [k["kid"] for k in jwks["keys"]] == [new]


async def test_revoke_pending_and_retiring(authority: Authority, clock: ManualClock) -> None:
    old = await _active(authority)
    new = (await authority.rotate()).events[0].kid
    clock.advance(6 * DAY_S)
    await authority.activate(new)
    third = (await authority.rotate()).events[0].kid
    await authority.revoke(old)
    await authority.revoke(third)
    assert states(await authority.keys()) == {old: "revoked", new: "active", third: "revoked"}
    with pytest.raises(IllegalTransition, match="already revoked"):
        await authority.revoke(old)


async def test_works_with_a_decoding_client(redis_url: str, clock: ManualClock, kek) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.flushdb()
        from issuer.policy import RotationPolicy

        authority = Authority(
            redis=client, issuer="http://other.test", policy=RotationPolicy(), kek=kek, clock=clock
        )
        await authority.rotate()
        assert sorted(k.state for k in await authority.keys()) == ["active", "pending"]
        assert len(await stream_events(client, authority)) == 3
    finally:
        await client.flushdb()
        await client.aclose()


async def test_store_lost_under_the_issuer_that_wrote_it_gets_its_signed_commits_back(
    authority: Authority, redis: aioredis.Redis
) -> None:
    await authority.rotate()
    before = await authority.snapshot()
    written = await stream_events(redis, authority)
    await redis.flushdb()
    after = await authority.snapshot()
    # The very commits, re-appended: same versions, same event ids, same digests.
    assert (after.epoch, after.version, after.meta["digest"]) == (
        before.epoch, before.version, before.meta["digest"],
    )  # fmt: skip
    assert await stream_events(redis, authority) == written
    assert {k: r.state for k, r in after.keys.items()} == {
        k: r.state for k, r in before.keys.items()
    }


async def test_store_lost_under_a_replica_is_restored_as_the_next_version(
    authority: Authority, redis: aioredis.Redis, clock
) -> None:
    from issuer.app import create_app
    from tests.issuer.conftest import make_settings

    before = await authority.snapshot()
    announce = await authority.announcement_jwks()
    # Another replica that read the store but wrote none of it: no commits to write back.
    replica = create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)
    await replica.state.authority.snapshot()
    await redis.flushdb()
    after = await replica.state.authority.snapshot()
    # The same history goes on: same epoch, same keys and states, the next version.
    assert after.epoch == before.epoch and after.version == before.version + 1
    assert {k: r.state for k, r in after.keys.items()} == {
        k: r.state for k, r in before.keys.items()
    }
    assert await replica.state.authority.announcement_jwks() == announce
    events = await stream_events(redis, authority)
    assert [(e.type, e.version, e.data["reason"]) for e in events] == [
        ("key-set-restored", before.version + 1, "store_empty")
    ]
    assert events[0].prev == before.meta["digest"] and events[0].digest == after.meta["digest"]
