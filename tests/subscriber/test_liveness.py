"""Liveness: live, degraded, failed or stale, from what a verifier was told and a clock."""

import math

import pytest

from subscriber import constants
from subscriber.clock import ManualClock
from subscriber.liveness import Liveness

LEEWAY_S = 5.0
MAX_STALENESS_S = 600.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _liveness(clock: ManualClock, fixed_bound_s: float | None = None) -> Liveness:
    return Liveness(
        clock, leeway_s=LEEWAY_S, max_staleness_s=MAX_STALENESS_S, fixed_bound_s=fixed_bound_s
    )


def test_nothing_confirmed_is_stale_and_not_live(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    assert liveness.fresh_at == liveness.confirmed_at == -math.inf
    assert not liveness.is_live()
    assert liveness.state() == "stale"


def test_connected_and_fresh_is_live_until_the_bound(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    bound_s = constants.freshness_intervals_allowed * constants.freshness_interval_s + LEEWAY_S
    assert liveness.bound_s == bound_s
    assert liveness.set_connected(True)
    assert liveness.degraded.is_set()  # connected, but nothing fresh yet
    assert liveness.on_fresh(clock())
    assert liveness.state() == "live" and not liveness.degraded.is_set()
    clock.advance(bound_s)
    assert liveness.is_live()
    clock.advance(0.001)
    assert not liveness.is_live()
    assert liveness.state() == "degraded"  # confirmed recently: not stale


def test_a_silent_stream_turns_degraded_on_the_next_read(clock: ManualClock) -> None:
    liveness = _liveness(clock, fixed_bound_s=10.0)
    liveness.set_connected(True)
    liveness.on_fresh(clock())
    clock.advance(11)
    assert not liveness.degraded.is_set()  # nobody asked yet
    assert not liveness.set_connected(True)  # unchanged connection...
    assert liveness.degraded.is_set()  # ...but past the bound: the poller wakes


def test_the_announced_interval_sets_the_bound_unless_fixed(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    liveness.announce_interval(2.0)
    assert liveness.bound_s == constants.freshness_intervals_allowed * 2.0 + LEEWAY_S
    fixed = _liveness(clock, fixed_bound_s=7.0)
    fixed.announce_interval(2.0)
    assert fixed.bound_s == 7.0


def test_a_disconnected_verifier_is_not_live_however_fresh(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    assert not liveness.on_fresh(clock())  # not connected: not live
    assert liveness.confirmed_at == clock()
    assert not liveness.set_connected(False)
    assert liveness.degraded.is_set() and liveness.state() == "degraded"
    assert liveness.set_connected(True)
    assert liveness.is_live() and not liveness.degraded.is_set()


def test_on_fresh_says_only_when_it_made_the_verifier_live(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    liveness.set_connected(True)
    assert liveness.on_fresh(clock())
    assert not liveness.on_fresh(clock())


def test_fresh_at_never_goes_back(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    liveness.confirm(clock() - 1)
    liveness.confirm(clock() - 50)  # an older snapshot, fetched later
    assert liveness.fresh_at == clock() - 1
    assert liveness.confirmed_at == clock()


def test_unsigned_keys_are_not_stale_but_not_live(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    liveness.set_connected(True)
    liveness.confirm_unsigned(clock())
    assert liveness.fresh_at == -math.inf
    assert liveness.state() == "degraded"


def test_failed_until_stale(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    liveness.confirm(clock())
    liveness.failure = "follower died: TypeError"
    assert liveness.state() == "failed"
    clock.advance(MAX_STALENESS_S)
    assert liveness.state() == "failed"
    clock.advance(0.001)
    assert liveness.state() == "stale"  # stale wins over failed


def test_live_wins_over_a_failure_not_yet_cleared(clock: ManualClock) -> None:
    liveness = _liveness(clock)
    liveness.set_connected(True)
    liveness.on_fresh(clock())
    liveness.failure = "follower died: TypeError"
    assert liveness.state() == "live"
