"""What happens after a delivery attempt: a pure decision, no clock and no I/O.

::

    2xx                                   delivered
    410 Gone                              gone          (the partner is disabled)
    failing for >= failure_disable_s      disabled      (no success since ``failing_since``)
    attempts spent                        dead_lettered (the next item may go)
    anything else                         retry         (after the schedule's wait, or longer
                                                         if a 429/503 sent Retry-After)
"""

from dataclasses import dataclass
from typing import Literal

from . import constants
from .errors import ConfigError
from .schedule import RetrySchedule

Outcome = Literal["delivered", "gone", "disabled", "dead_lettered", "retry"]


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How the relay delivers; every duration in seconds.

    :param deadline_s: total time of one attempt (resolve, connect, send, read the response).
    :param lease_s: a partner's delivery lease; must exceed ``deadline_s``.
    :param failure_disable_s: continuous failure after which a partner is disabled.
    :param poll_interval_s: how often a replica looks for work queued by other replicas.
    :param collapse: let one delivery stand for the queued items after its head that its
        full key set already covers (listed in ``data.events``; a revocation always travels
        alone). Off: every event is its own delivery.
    """

    schedule: RetrySchedule
    deadline_s: float = constants.delivery_timeout_s
    lease_s: float = constants.partner_lease_s
    max_response_bytes: int = constants.response_max_bytes
    failure_disable_s: float = constants.failure_disable_s
    poll_interval_s: float = constants.poll_interval_s
    collapse: bool = False

    def __post_init__(self) -> None:
        if self.deadline_s <= 0:
            raise ConfigError(f'delivery deadline must be > 0, the input is "{self.deadline_s}"')
        if self.lease_s <= self.deadline_s:
            raise ConfigError(
                f"partner lease must exceed the delivery deadline ({self.deadline_s}), "
                f'the input is "{self.lease_s}"'
            )
        if self.max_response_bytes < 1:
            raise ConfigError(
                f'response byte cap must be >= 1, the input is "{self.max_response_bytes}"'
            )
        if self.poll_interval_s <= 0 or self.failure_disable_s <= 0:
            raise ConfigError(
                "poll interval and failure-disable window must be > 0, the inputs are "
                f'"{self.poll_interval_s}" and "{self.failure_disable_s}"'
            )


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one HTTP attempt; ``location`` is a redirect's target (redacted)."""

    status: int | None
    error: str | None
    latency_s: float
    retry_after_s: float | None = None
    location: str | None = None


def decide(
    result: Attempt, number: int, failing_since: float | None, now: float, policy: DeliveryPolicy
) -> Outcome:
    """The outcome of attempt ``number`` (1-based) of a queue head.

    :param failing_since: when the partner's current failure streak began (``None``: this
        attempt is the first failure, if it failed).
    """
    if result.error is None:
        return "delivered"
    if result.status == 410:
        return "gone"
    since = failing_since if failing_since is not None else now
    if now - since >= policy.failure_disable_s:
        return "disabled"
    if policy.schedule.delay_s(number + 1, result.retry_after_s) is None:
        return "dead_lettered"
    return "retry"
