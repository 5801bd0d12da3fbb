"""The demo's bookkeeping: what counts as a rotation, a revocation's arrival, a partner's inbox."""

import pytest

from keyherald.demo.partner import Inbox, summarise
from keyherald.demo.state import DemoState, Revocation
from keyherald.demo.view import key_state_at, summary_lines
from keyherald.observe import Heartbeat
from subscriber.events import Event


def ev(version: int, type_: str, kid: str, **data) -> Event:
    return Event(type=type_, issuer="i", epoch="e", version=version, kid=kid, ts=0.0, data=data)


def beat(service: str, kids: list[str], at: float) -> Heartbeat:
    return Heartbeat(service, service, "live", 1, dict.fromkeys(kids, 0.0), 0.0, at, {})


def test_only_scheduled_activations_count_as_rotations() -> None:
    state = DemoState(rotations_wanted=1)
    state.apply(ev(1, "key-added", "a", jwk={}, alg="ES256", activate_at=0))
    state.apply(ev(2, "key-activated", "a", previous_kid=None))  # bootstrap
    state.apply(ev(3, "key-added", "b", jwk={}, alg="ES256", activate_at=0))
    state.apply(ev(4, "key-activated", "b", previous_kid="a"))  # a rotation
    state.apply(ev(5, "key-added", "c", jwk={}, alg="ES256", activate_at=0))
    state.apply(ev(6, "key-retired", "b", reason="revoked"))
    state.apply(ev(7, "key-activated", "c", previous_kid="b"))  # forced by the revocation
    state.apply(ev(8, "key-retired", "a", reason="expired"))
    assert state.rotations == 1
    assert state.retirements == 1
    assert state.revoked == {"b"}
    assert state.version == 8


def test_revocation_arrives_when_every_fresh_heartbeat_lacks_the_key() -> None:
    state = DemoState(rotations_wanted=1)
    state.revocation = Revocation(kid="b", requested_at=100.0)
    state.verifiers = [beat("api-a", ["c"], 100.5), beat("api-b", ["b", "c"], 100.4)]
    state.update_revocation(101.0)
    assert state.revocation.reached_all_at is None
    state.verifiers = [beat("api-a", ["c"], 100.5), beat("api-b", ["c"], 99.0)]
    state.update_revocation(101.0)
    assert state.revocation.reached_all_at is None, (
        "a heartbeat from before the request proves nothing"
    )
    state.verifiers = [beat("api-a", ["c"], 100.5), beat("api-b", ["c"], 100.9)]
    state.update_revocation(101.2)
    assert state.revocation.propagation_s == pytest.approx(1.2)
    assert state.revocation.verifiers == 2


def test_success_needs_zero_valid_rejections_and_all_rotations() -> None:
    state = DemoState(rotations_wanted=2, rotations=2)
    state.loadgen = {"verified": 10, "valid_rejected": 0}
    assert state.succeeded()
    assert summary_lines(state)[0] == "summary: OK"
    state.loadgen["valid_rejected"] = 1
    assert not state.succeeded()
    assert summary_lines(state)[0] == "summary: FAILED"
    state.loadgen["valid_rejected"] = 0
    state.rotations = 1
    assert not state.succeeded()


def test_key_state_on_the_timeline() -> None:
    key = {"state": "retiring", "created_at": 0, "activated_at": 6, "deactivated_at": 96,
           "retire_at": 103, "ended_at": None}  # fmt: skip
    assert [key_state_at(key, t) for t in (-1, 3, 50, 100, 104)] == [
        "none", "pending", "active", "retiring", "none"
    ]  # fmt: skip
    pending = {"state": "pending", "created_at": 0, "activate_at": 6}
    assert key_state_at(pending, 10) == "active"  # planned, drawn ahead of time


def payload(version: int, kid: str) -> dict:
    return {
        "type": "keyherald.key-added",
        "data": {
            "event": {"type": "key-added", "version": version, "kid": kid},
            "version": version,
            "jwks": {"keys": [{"kid": "a"}, {"kid": kid}]},
        },
    }


def test_inbox_counts_order_and_duplicates() -> None:
    inbox = Inbox()
    inbox.record("msg_1", summarise(payload(3, "b")))
    inbox.record("msg_1", summarise(payload(3, "b")))  # a retry
    inbox.record("msg_2", summarise(payload(5, "c")))  # 4 collapsed: fine
    inbox.record("msg_3", summarise(payload(4, "x")))  # older after newer: out of order
    snap = inbox.snapshot()
    assert snap["delivered"] == 3
    assert snap["duplicates"] == 1
    assert snap["out_of_order"] == 1
    assert snap["keys"] == ["a", "x"] and snap["key_set_version"] == 4
    assert [e["version"] for e in snap["events"]] == [3, 5, 4]
