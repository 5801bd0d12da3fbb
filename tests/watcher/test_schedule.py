"""The poll schedule: pure rules, checked over many draws (hypothesis) and by example."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.schedule import PollPolicy, Response, next_delay_s, parse_retry_after

POLICY = PollPolicy(floor_s=60, ceiling_s=3600, default_interval_s=300, jitter_ratio=0.1)


@settings(derandomize=True, max_examples=300)
@given(
    fresh=st.one_of(st.none(), st.floats(0, 10**7)),
    retry_after=st.one_of(st.none(), st.floats(0, 10**7)),
    ok=st.booleans(),
    failures=st.integers(0, 100),
    seed=st.integers(0, 2**32),
)
def test_never_faster_than_the_provider_asks_nor_the_floor(
    fresh: float | None, retry_after: float | None, ok: bool, failures: int, seed: int
) -> None:
    response = Response(ok=ok, fresh_s=fresh, retry_after_s=retry_after)
    delay = next_delay_s(POLICY, response, 0 if ok else max(failures, 1), random.Random(seed))
    assert delay >= POLICY.floor_s
    if ok and fresh is not None:
        assert delay >= min(fresh, POLICY.max_honoured_s)
    if not ok and retry_after is not None:
        assert delay >= min(retry_after, POLICY.max_honoured_s)
    # Jitter only lengthens, by at most its ratio, and nothing exceeds what was honoured.
    assert delay <= max(POLICY.ceiling_s, POLICY.max_honoured_s) * (1 + POLICY.jitter_ratio)


def test_examples() -> None:
    flat = PollPolicy(floor_s=60, ceiling_s=3600, default_interval_s=300, jitter_ratio=0)
    rng = random.Random(1)
    assert next_delay_s(flat, Response(ok=True, fresh_s=600), 0, rng) == 600
    assert next_delay_s(flat, Response(ok=True, fresh_s=5), 0, rng) == 60  # floor
    assert next_delay_s(flat, Response(ok=True, fresh_s=0), 0, rng) == 60  # no-cache
    assert next_delay_s(flat, Response(ok=True), 0, rng) == 300  # no max-age: our default
    # Google's six hours: honoured, past our ceiling (the provider asked).
    assert next_delay_s(flat, Response(ok=True, fresh_s=21_600), 0, rng) == 21_600
    assert next_delay_s(flat, Response(ok=True, fresh_s=10**9), 0, rng) == 86_400
    # Failures: 60 (floor over 30), 60, 120, 240, ... up to the ceiling.
    backoff = [next_delay_s(flat, Response(ok=False), n, rng) for n in range(1, 10)]
    assert backoff == [60, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert next_delay_s(flat, Response(ok=False, retry_after_s=7200), 1, rng) == 7200


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(" 7 ", now) == 7
    assert parse_retry_after("Tue, 14 Nov 2023 22:46:40 GMT", now) == 2000
    assert parse_retry_after("Tue, 14 Nov 2023 20:00:00 GMT", now) == 0  # in the past
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad, now) is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"floor_s": 0}, "floor_s"),
        ({"ceiling_s": 10}, "ceiling_s"),
        ({"jitter_ratio": 2}, "jitter_ratio"),
        ({"default_interval_s": float("inf")}, "default_interval_s"),
        ({"max_honoured_s": 100}, "max_honoured_s"),
    ],
)
def test_policy_refuses_bad_bounds_naming_them(changes: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PollPolicy(**changes)  # type: ignore[arg-type]
