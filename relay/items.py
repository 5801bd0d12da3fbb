"""What a partner queue holds: items (one verified event each), and which of them one delivery
may stand for. Pure: no Redis, no clock."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from subscriber.events import KEY_RETIRED, Event


class Recorded(NamedTuple):
    """A verified event as the stream holds it: the event, its signed JWS, its entry id."""

    event: Event
    jws: str
    entry_id: str


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Item:
    """One queued delivery: a verified event, the signed JWS, the stable webhook id, and the
    stream entry it came from (empty for items queued before entry ids were kept)."""

    version: int
    webhook_id: str
    event: Mapping[str, Any]
    jws: str
    entry_id: str = ""

    @property
    def member(self) -> str:
        return json.dumps(
            {
                "v": self.version,
                "id": self.webhook_id,
                "event": self.event,
                "jws": self.jws,
                "e": self.entry_id,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @property
    def is_revocation(self) -> bool:
        """A ``key-retired`` with reason ``revoked``: never collapsed into another delivery."""
        data = self.event.get("data")
        return (
            self.event.get("type") == KEY_RETIRED
            and isinstance(data, Mapping)
            and data.get("reason") == "revoked"
        )

    @classmethod
    def from_member(cls, raw: bytes | str) -> "Item":
        d = json.loads(raw)
        return cls(d["v"], d["id"], d["event"], d["jws"], d.get("e", ""))

    @classmethod
    def of(cls, event: Event, jws: str, entry_id: str = "", suffix: str = "") -> "Item":
        """The item for ``event``; its webhook id derives from the event id, so every replica
        and every retry sends the same one (a replay adds ``suffix`` to get a new one)."""
        return cls(event.version, f"msg_{event.event_id}{suffix}", event.payload(), jws, entry_id)


def collapse(candidates: Sequence[Item], pending_from: str | None) -> list[Item]:
    """The items one delivery may stand for: the head (``candidates[0]``) and the queued items
    after it, up to the first one that must travel on its own.

    A revocation always travels on its own (neither collapsed into an earlier delivery nor
    collapsing later ones into itself), and an item is only taken if every older stream entry
    is already queued (``pending_from``: the oldest entry still pending in the group), so the
    set cannot change between the first attempt and a retry.
    """
    if not candidates:
        return []
    head = candidates[0]
    batch = [head]
    if head.is_revocation:
        return batch
    for item in candidates[1:]:
        if item.is_revocation:
            break
        if pending_from is not None and (
            not item.entry_id or entry_order(item.entry_id) > entry_order(pending_from)
        ):
            break
        batch.append(item)
    return batch


def deliveries(items: Sequence[Item]) -> int:
    """How many requests ``items`` go out as when collapsing (a key set covering them all)."""
    count, rest = 0, sorted(items, key=lambda i: i.version)
    while rest:
        rest = rest[len(collapse(rest, None)) :]
        count += 1
    return count


def waits_for_older(head: Item, pending_from: str | None) -> bool:
    """Whether ``head`` must wait: an older stream entry than its own is still pending in the
    consumer group (``pending_from``: the oldest pending entry), not queued yet."""
    if pending_from is None:
        return False
    # An item queued before entry ids were kept: hold it while anything is pending.
    return not head.entry_id or entry_order(pending_from) < entry_order(head.entry_id)
