"""Diffing key sets: new kids at once, gone kids after the hold, flaps and replaced material."""

import pytest

from issuer import keygen
from subscriber.jwk import PublicKey, load_public_jwk
from watcher.diff import KeySetTracker


def key(kid: str, alg: str = "ES256") -> PublicKey:
    return load_public_jwk({**keygen.generate(alg).jwk, "kid": kid})


def test_new_kids_at_once_gone_kids_after_the_hold() -> None:
    a, b = key("a"), key("b")
    tracker = KeySetTracker(hold_s=900)
    assert [k.kid for k in tracker.update({"a": a}, 0).added] == ["a"]
    assert not tracker.update({"a": a}, 10)
    assert [k.kid for k in tracker.update({"a": a, "b": b}, 20).added] == ["b"]
    assert not tracker.update({"b": b}, 100)  # a missing: hold starts
    assert tracker.due_s(100) == 900
    assert not tracker.update({"b": b}, 999)
    assert tracker.update({"b": b}, 1000).retired == ("a",)
    assert set(tracker.current) == {"b"} and tracker.due_s(1000) is None


def test_a_flapping_edge_never_retires_a_key() -> None:
    a, b = key("a"), key("b")
    tracker = KeySetTracker(hold_s=900)
    tracker.update({"a": a, "b": b}, 0)
    for t in range(60, 5000, 60):  # every other answer comes from a stale edge without a
        diff = tracker.update({"b": b} if t % 120 else {"a": a, "b": b}, t)
        assert not diff, t


def test_same_kid_new_material_is_reported_replaced_and_respelling_is_not() -> None:
    a = key("a")
    tracker = KeySetTracker(hold_s=0)
    tracker.update({"a": a}, 0)
    respelled = load_public_jwk({**dict(reversed(list(a.jwk.items()))), "x5t": "abc"})
    assert not tracker.update({"a": respelled}, 1)
    other = key("a")
    assert [k.kid for k in tracker.update({"a": other}, 2).replaced] == ["a"]
    assert tracker.current["a"] is other


def test_hold_must_be_sane() -> None:
    with pytest.raises(ValueError, match="hold_s"):
        KeySetTracker(hold_s=-1)
