"""The pure decision after an attempt, and policy checks at construction."""

import pytest

from relay.errors import ConfigError
from relay.policy import Attempt, DeliveryPolicy, decide
from relay.schedule import RetrySchedule

POLICY = DeliveryPolicy(RetrySchedule([0, 5, 300], jitter=0), failure_disable_s=3600)


def attempt(status: int | None, error: str | None = "status", retry_after: float | None = None):
    return Attempt(status, None if status and 200 <= status < 300 else error, 0.01, 1, retry_after)


@pytest.mark.parametrize(
    ("result", "number", "failing_since", "now", "outcome"),
    [
        (attempt(200), 1, None, 0.0, "delivered"),
        (attempt(204), 3, 0.0, 9999.0, "delivered"),  # a success beats a long failure streak
        (attempt(410), 1, None, 0.0, "gone"),
        (attempt(500), 1, None, 0.0, "retry"),
        (attempt(None, "timeout"), 2, 0.0, 10.0, "retry"),
        (attempt(302, "redirect"), 2, 0.0, 10.0, "retry"),
        (attempt(500), 3, 0.0, 10.0, "dead_lettered"),  # three attempts in the schedule
        (attempt(500), 1, 0.0, 3600.0, "disabled"),
        (attempt(429, retry_after=100_000), 1, None, 0.0, "retry"),
    ],
)
def test_decide(result, number, failing_since, now, outcome) -> None:
    assert decide(result, number, failing_since, now, POLICY) == outcome


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"deadline_s": 0}, '"0"'),
        ({"deadline_s": 10, "lease_s": 10}, '"10"'),
        ({"max_response_bytes": 0}, '"0"'),
        ({"poll_interval_s": -1}, '"-1"'),
    ],
)
def test_policy_refuses_settings_that_cannot_work(kwargs, named) -> None:
    with pytest.raises(ConfigError, match=named):
        DeliveryPolicy(RetrySchedule([0]), **kwargs)
