"""Partner queues at the Redis level: what one delivery may stand for, the delivered mark,
and stragglers of an old epoch."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.items import Item, collapse, deliveries, entry_order
from relay.queue import DeliveryStore
from subscriber.redis_keys import event_stream
from tests.relay.conftest import ISSUER


def item(
    version: int, type_: str = "key-added", reason: str | None = None, entry: str = ""
) -> Item:
    data = {"reason": reason} if reason else {}
    event = {"type": type_, "version": version, "epoch": "e1", "ts": 1.0, "data": data}
    return Item(version, f"msg_{version}", event, "jws", entry or f"{version}-0")


def revoked(version: int) -> Item:
    return item(version, "key-retired", "revoked")


def test_a_revocation_always_travels_alone() -> None:
    queue = [item(1), item(2, "key-activated"), revoked(3), item(4), item(5, "key-activated")]
    assert [i.version for i in collapse(queue, None)] == [1, 2]
    assert [i.version for i in collapse(queue[2:], None)] == [3]
    assert [i.version for i in collapse(queue[3:], None)] == [4, 5]
    assert deliveries(queue) == 3
    # An expired key's retirement is an ordinary event.
    assert collapse([item(1), item(2, "key-retired", "expired")], None)[-1].version == 2


def test_an_item_is_not_collapsed_while_an_older_entry_is_unqueued() -> None:
    queue = [item(1), item(2), item(5), item(6)]
    # Entry 3-0 (version 3 or 4) is still pending in the group: 5 and 6 must wait for it.
    assert [i.version for i in collapse(queue, "3-0")] == [1, 2]


def test_entry_ids_order_numerically() -> None:
    assert entry_order("9-0") < entry_order("10-0") < entry_order("10-1")


@given(st.lists(st.sampled_from(["added", "activated", "expired", "revoked"]), max_size=30))
def test_collapsing_covers_every_item_once_and_never_merges_a_revocation(kinds) -> None:
    types = {"added": ("key-added", None), "activated": ("key-activated", None)}
    types |= {"expired": ("key-retired", "expired"), "revoked": ("key-retired", "revoked")}
    queue = [item(v, *types[k]) for v, k in enumerate(kinds, 1)]
    batches, rest = [], queue
    while rest:
        batches.append(collapse(rest, None))
        rest = rest[len(batches[-1]) :]
    assert [i for b in batches for i in b] == queue
    assert all(len(b) == 1 for b in batches if any(i.is_revocation for i in b))
    assert len(batches) == deliveries(queue)


async def test_a_straggler_of_an_old_epoch_does_not_wipe_the_new_epochs_queue(redis) -> None:
    store = DeliveryStore(redis, ISSUER)
    stream = event_stream(ISSUER)
    await redis.xgroup_create(stream, "relay", id="0", mkstream=True)
    new = Item(1, "msg_new", {"epoch": "e2"}, "jws", "5-0")
    await store.fan_out(new, "e2", ["p"], group="relay", entry_id="5-0")
    # Reclaimed late: an entry of the old store, older in the stream than the new epoch.
    old = Item(9, "msg_old", {"epoch": "e1"}, "jws", "3-0")
    await store.fan_out(old, "e1", ["p"], group="relay", entry_id="3-0")
    assert await store.head("p") == new
    # A third epoch, newer in the stream, does replace it.
    newer = Item(1, "msg_newer", {"epoch": "e3"}, "jws", "7-0")
    await store.fan_out(newer, "e3", ["p"], group="relay", entry_id="7-0")
    assert await store.head("p") == newer and await store.depth("p") == 1


async def test_the_delivered_mark_skips_only_what_was_delivered(redis) -> None:
    store = DeliveryStore(redis, ISSUER)
    await redis.xgroup_create(event_stream(ISSUER), "relay", id="0", mkstream=True)
    for v in (1, 2, 3):
        await store.fan_out(item(v), "e1", ["p"], group="relay", entry_id=f"{v}-0")
    assert await store.complete("p", [item(1), item(2)]) == 2
    assert (await store.state("p", item(3))).delivered == 2
    await store.fan_out(item(2), "e1", ["p"], group="relay", entry_id="2-0")  # re-read
    assert [i.version for i in await store.items("p", 0, 10)] == [3]


@pytest.mark.parametrize("pending", [0, 2])
async def test_oldest_pending_is_the_groups_oldest_unqueued_entry(redis, pending) -> None:
    store = DeliveryStore(redis, ISSUER)
    stream = event_stream(ISSUER)
    assert await store.oldest_pending("relay") is None  # no group yet
    await redis.xgroup_create(stream, "relay", id="0", mkstream=True)
    ids = [await redis.xadd(stream, {"x": "1"}) for _ in range(3)]
    if pending:
        await redis.xreadgroup("relay", "c", {stream: ">"}, count=pending)
        assert await store.oldest_pending("relay") == ids[0].decode()
    else:
        assert await store.oldest_pending("relay") is None
