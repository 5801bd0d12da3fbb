"""When to retry a failed delivery: a fixed schedule with jitter, pure (no clock, no I/O).

``delays_s[i]`` is the wait before attempt ``i + 1``; the first entry is normally ``0``
(deliver at once), so the schedule also bounds the number of attempts. The waits are
tenacity wait strategies (``wait_fixed + wait_random`` per step, chained), the same objects
tenacity's own retry loops use, evaluated here against the attempt number kept in Redis because
a delivery's retries outlive any one process.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState
from tenacity.wait import wait_base, wait_chain, wait_fixed, wait_random

from . import constants
from .errors import ConfigError


@dataclass(frozen=True)
class RetrySchedule:
    """The retry policy of every partner queue.

    :param delays_s: wait before each attempt, in seconds; its length is the attempt limit.
    :param jitter: up to this fraction of each wait is added at random, so that partners
        recovering together are not hit by every relay at the same instant.
    :param max_retry_after_s: cap on a partner's ``Retry-After``.
    """

    delays_s: Sequence[float]
    jitter: float = constants.retry_jitter
    max_retry_after_s: float = constants.max_retry_after_s
    _wait: wait_base = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.delays_s or any(d < 0 for d in self.delays_s):
            raise ConfigError(
                f"retry schedule needs at least one non-negative delay, the input is "
                f'"{list(self.delays_s)}"',
                reason="bad_schedule",
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f'jitter must be in [0, 1], the input is "{self.jitter}"')
        if self.max_retry_after_s < 0:
            raise ConfigError(
                f'max Retry-After must be >= 0, the input is "{self.max_retry_after_s}"'
            )
        steps = [wait_fixed(d) + wait_random(0, d * self.jitter) for d in self.delays_s]
        object.__setattr__(self, "_wait", wait_chain(*steps))

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s)

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float | None:
        """Seconds to wait before ``attempt`` (1-based), or ``None`` once attempts are spent.

        A partner's ``Retry-After`` (on 429/503) lengthens the wait, never shortens it.
        """
        if attempt < 1 or attempt > self.max_attempts:
            return None
        state = RetryCallState(AsyncRetrying(), None, (), {})
        state.attempt_number = attempt
        delay = float(self._wait(state))
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay
