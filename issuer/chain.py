"""Chained events: a change's events carry the digest of the key set before and after each one,
computed by the rule verifiers apply (:func:`subscriber.history.advance`), so a verifier
applies only what continues its own history (``docs/protocol.md``); and the signed commits a
process keeps to append again should the store lose them."""

from collections.abc import Mapping, Sequence
from dataclasses import replace

from subscriber.events import Event
from subscriber.history import advance, state_digest

from .integrity import entries
from .lifecycle import Change
from .store import Snapshot


def chained_events(
    issuer: str, snap: Snapshot, change: Change, epoch: str, now: float
) -> tuple[Event, ...]:
    """The events of ``change`` on top of ``snap``, each with the state digests before and
    after it (``prev``, ``digest``), versions from ``snap.version + 1``."""
    # Each event's digest is computed by the same rule verifiers apply (history.advance),
    # starting from the digest of the state this change was built on.
    state = {e[0]: e for e in entries(snap.keys.values())} if snap.epoch == epoch else {}
    prev = state_digest(issuer, epoch, snap.version, state.values())
    events: list[Event] = []
    for offset, spec in enumerate(change.events, start=1):
        version = snap.version + offset
        draft = Event(
            type=spec.type, issuer=issuer, epoch=epoch, version=version,
            kid=spec.kid, ts=now, data=spec.data,
        )  # fmt: skip
        state = advance(state, draft)
        digest = state_digest(issuer, epoch, version, state.values())
        events.append(replace(draft, prev=prev, digest=digest))
        prev = digest
    return tuple(events)


class RecentCommits:
    """The signed stream entries of this process's newest commits, by (epoch, version), with
    the digest each one's ``prev`` names: what a restore appends again when the store lost
    them, so the stream stays whole and consecutive.

    :param keep: how many commits (events) to keep, newest first.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._entries: dict[tuple[str, int], tuple[Mapping[str, str], str | None]] = {}

    def remember(self, events: Sequence[Event], signed: Sequence[Mapping[str, str]]) -> None:
        """Keep ``signed``, the stream fields of ``events``."""
        for event, fields in zip(events, signed, strict=True):
            self._entries[(event.epoch, event.version)] = (fields, event.prev)
        while len(self._entries) > self.keep:
            del self._entries[next(iter(self._entries))]

    def since(
        self, epoch: str, after: int, upto: int, digest: str | None
    ) -> list[Mapping[str, str]]:
        """The entries of versions ``after + 1`` to ``upto`` of ``epoch``, when this process
        holds every one of them and the first continues ``digest`` (the store's state at
        ``after``; ``None`` when the store is empty); else ``[]``."""
        lost = [self._entries.get((epoch, v)) for v in range(after + 1, upto + 1)]
        if not lost or any(entry is None for entry in lost):
            return []
        first = lost[0]
        assert first is not None
        if after and digest != first[1]:
            return []  # the store holds another state at that version: not ours to extend
        return [entry[0] for entry in lost if entry is not None]
