"""KeySet: pure state, events applied once and in version order, snapshot adoption."""

import dataclasses
from typing import Any

from subscriber.events import Event
from subscriber.history import KeySetSnapshot, SnapshotKey, advance, state_digest
from subscriber.keyset import KeySet, Outcome
from tests.keys import es256_jwk

ISSUER = "https://id.example.com"


def added(jwk: dict[str, Any], version: int, epoch: str = "e1") -> Event:
    data = {"jwk": jwk, "alg": "ES256", "activate_at": 10.0, "retire_at": None}
    return Event("key-added", ISSUER, epoch, version, jwk["kid"], 1.0, data)


def activated(kid: str, previous: str | None, version: int) -> Event:
    data = {"previous_kid": previous, "previous_retire_at": None}
    return Event("key-activated", ISSUER, "e1", version, kid, 2.0, data)


def retired(kid: str, reason: str, version: int) -> Event:
    return Event("key-retired", ISSUER, "e1", version, kid, 3.0, {"reason": reason})


def snapshot(
    version: int, epoch: str, states: dict[str, str], *keys: dict[str, Any]
) -> KeySetSnapshot:
    """A key-set snapshot as the issuer signs it (digest included; the signature is not
    KeySet's concern)."""
    usable = tuple(SnapshotKey(jwk=k, state=states[k["kid"]]) for k in keys)
    digest = state_digest(ISSUER, epoch, version, [k.entry() for k in usable])
    gone = {kid: state for kid, state in states.items() if state in ("revoked", "retired")}
    return KeySetSnapshot(ISSUER, epoch, version, digest, 0.0, 1e12, usable, gone)


def chained(start: KeySetSnapshot, *events: Event) -> list[Event]:
    """``events`` with the ``prev``/``digest`` an issuer gives them, computed in version
    order from ``start`` (returned in the order given)."""
    entries = {k.kid: k.entry() for k in start.keys}
    prev, done = start.digest, {}
    for event in sorted(events, key=lambda e: e.version):
        entries = advance(entries, event)
        digest = state_digest(ISSUER, event.epoch, event.version, entries.values())
        done[event.version] = dataclasses.replace(event, prev=prev, digest=digest)
        prev = digest
    return [done[e.version] for e in events]


def test_lifecycle_through_events() -> None:
    a, b = es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    assert ks.replace_from_snapshot(snapshot(2, "e1", {a["kid"]: "active"}, a), now=0.0)
    assert ks.apply_event(added(b, 3), now=1.0) is Outcome.APPLIED
    assert ks.view.states[b["kid"]] == "pending" and b["kid"] in ks.view.keys
    assert ks.apply_event(activated(b["kid"], a["kid"], 4), now=2.0) is Outcome.APPLIED
    assert ks.view.states == {a["kid"]: "retiring", b["kid"]: "active"}
    assert ks.apply_event(retired(a["kid"], "expired", 5), now=3.0) is Outcome.APPLIED
    assert set(ks.view.keys) == {b["kid"]}
    assert ks.view.gone == {a["kid"]: "retired_key"}
    assert ks.apply_event(retired(b["kid"], "revoked", 6), now=4.0) is Outcome.APPLIED
    assert ks.view.gone[b["kid"]] == "revoked_key" and not ks.view.keys
    assert ks.view.first_held == {}


def test_replayed_reordered_and_gapped_events_change_nothing() -> None:
    a, b = es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    ks.replace_from_snapshot(snapshot(2, "e1", {a["kid"]: "active"}, a), now=0.0)
    view = ks.view
    assert ks.apply_event(added(b, 2), now=1.0) is Outcome.IGNORED  # replay of an old version
    assert ks.apply_event(activated(b["kid"], a["kid"], 4), now=1.0) is Outcome.GAP
    assert ks.apply_event(added(b, 3, epoch="e2"), now=1.0) is Outcome.NEW_EPOCH
    assert ks.view is view
    assert ks.apply_event(added(b, 3), now=1.0) is Outcome.APPLIED
    assert ks.apply_event(added(b, 3), now=1.0) is Outcome.IGNORED  # idempotent


def test_older_jwks_never_rolls_back_events() -> None:
    a, b = es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    ks.replace_from_snapshot(snapshot(2, "e1", {a["kid"]: "active"}, a), now=0.0)
    ks.apply_event(added(b, 3), now=1.0)
    assert not ks.replace_from_snapshot(snapshot(2, "e1", {a["kid"]: "active"}, a), now=2.0)
    assert b["kid"] in ks.view.keys


def test_jwks_without_a_key_we_held_marks_it_gone() -> None:
    a, b = es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    ks.replace_from_snapshot(snapshot(2, "e1", {a["kid"]: "active"}, a), now=0.0)
    ks.replace_from_snapshot(
        snapshot(5, "e1", {b["kid"]: "active", a["kid"]: "revoked"}, b), now=1.0
    )
    assert set(ks.view.keys) == {b["kid"]}
    assert ks.view.gone == {a["kid"]: "revoked_key"}


def test_new_epoch_replaces_everything_and_old_epoch_events_are_replays() -> None:
    a, b = es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    ks.replace_from_snapshot(snapshot(7, "e1", {a["kid"]: "active"}, a), now=0.0)
    ks.apply_event(retired(a["kid"], "revoked", 8), now=0.5)
    assert ks.replace_from_snapshot(snapshot(2, "e2", {b["kid"]: "active"}, b), now=1.0)
    assert (ks.version, ks.epoch, set(ks.view.keys), dict(ks.view.gone)) == (
        2,
        "e2",
        {b["kid"]},
        {},
    )
    assert ks.apply_event(added(es256_jwk(), 9, epoch="e1"), now=2.0) is Outcome.OLD_EPOCH


def test_a_key_that_fails_to_load_never_verifies() -> None:
    a, weak = es256_jwk(), es256_jwk()
    weak["x"] = weak["x"][:-4] + "AAAA"  # no longer on the curve
    ks = KeySet(ISSUER)
    ks.replace_from_snapshot(snapshot(1, "e1", {a["kid"]: "active"}, a), now=0.0)
    assert ks.apply_event(added(weak, 2), now=1.0) is Outcome.APPLIED
    assert weak["kid"] not in ks.view.keys


def test_a_revoked_kid_is_never_trusted_again_whatever_a_signed_snapshot_says() -> None:
    a, b = es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    start = snapshot(1, "e1", {a["kid"]: "active"}, a)
    ks.replace_from_snapshot(start, now=0.0)
    (event,) = chained(start, retired(a["kid"], "revoked", 2))
    assert ks.apply_event(event, now=1.0) is Outcome.APPLIED
    # A later snapshot (a new epoch, or a restored backup the issuer signed) lists it again.
    revived = snapshot(9, "e2", {a["kid"]: "active", b["kid"]: "pending"}, a, b)
    assert ks.replace_from_snapshot(revived, now=2.0)
    assert set(ks.view.keys) == {b["kid"]}
    assert ks.view.gone[a["kid"]] == "revoked_key"
    # And so does a signed key-added event of that epoch.
    (readded,) = chained(revived, added(a, 10, epoch="e2"))
    assert ks.apply_event(readded, now=3.0) is Outcome.APPLIED
    assert a["kid"] not in ks.view.keys


def test_events_that_do_not_continue_our_history_are_forks() -> None:
    a, b, c = es256_jwk(), es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    start = snapshot(1, "e1", {a["kid"]: "active"}, a)
    ks.replace_from_snapshot(start, now=0.0)
    (ours,) = chained(start, added(b, 2))
    other_history = snapshot(1, "e1", {a["kid"]: "active", c["kid"]: "pending"}, a, c)
    (theirs,) = chained(other_history, added(b, 2))  # right version, another prev
    assert ks.apply_event(theirs, now=1.0) is Outcome.FORK
    assert ks.apply_event(dataclasses.replace(ours, digest="sha256:other"), now=1.0) is (
        Outcome.FORK
    )
    assert ks.version == 1
    assert ks.apply_event(ours, now=1.0) is Outcome.APPLIED
    # The same version again with another content: a fork, not a duplicate.
    (same_version,) = chained(start, added(c, 2))
    assert ks.apply_event(same_version, now=2.0) is Outcome.FORK
    assert ks.apply_event(ours, now=2.0) is Outcome.IGNORED


def test_an_older_snapshot_of_our_epoch_is_a_refused_rollback() -> None:
    a, b = es256_jwk(), es256_jwk()
    ks = KeySet(ISSUER)
    ks.replace_from_snapshot(snapshot(5, "e1", {b["kid"]: "active"}, b), now=0.0)
    assert not ks.replace_from_snapshot(snapshot(4, "e1", {a["kid"]: "active"}, a), now=1.0)
    assert set(ks.view.keys) == {b["kid"]}
