"""When to poll an upstream next: pure functions of the last response and a random source.

Rules, in order of precedence:

1. after a success (``200`` or ``304``) the delay is the response's remaining freshness
   (``max-age`` minus ``Age``), or ``default_interval_s`` without one, raised to ``floor_s``;
   only our own default is capped by ``ceiling_s``, since polling before the provider's
   ``max-age`` runs out is polling faster than it asks;
2. after a failure (``429``, ``5xx``, other unexpected status, transport or parse error) the
   delay doubles per consecutive failure from ``backoff_base_s`` up to ``ceiling_s``, is never
   shorter than ``floor_s``, and never shorter than the response's ``Retry-After``;
3. a ``max-age`` or ``Retry-After`` past ``max_honoured_s`` counts as ``max_honoured_s``;
4. jitter only lengthens a delay, by up to ``jitter_ratio`` of it.
"""

import email.utils
import math
import random
from dataclasses import dataclass

from . import constants

__all__ = ["PollPolicy", "Response", "next_delay_s", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """Bounds of the poll schedule of one upstream. Checked at construction.

    :raises ValueError: a bound that cannot be right, named with its value.
    """

    floor_s: float = constants.poll_floor_s
    ceiling_s: float = constants.poll_ceiling_s
    default_interval_s: float = constants.default_interval_s
    jitter_ratio: float = constants.jitter_ratio
    backoff_base_s: float = constants.backoff_base_s
    max_honoured_s: float = constants.max_honoured_s

    def __post_init__(self) -> None:
        for name in ("floor_s", "ceiling_s", "default_interval_s", "backoff_base_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(
                    f"{name} must be a positive number of seconds, the input is {value!r}"
                )
        if self.ceiling_s < self.floor_s:
            raise ValueError(
                f"ceiling_s ({self.ceiling_s}) must not be below floor_s ({self.floor_s})"
            )
        if not 0 <= self.jitter_ratio <= 1:
            raise ValueError(
                f"jitter_ratio must be from 0 to 1, the input is {self.jitter_ratio!r}"
            )
        if self.max_honoured_s < self.ceiling_s:
            raise ValueError(
                f"max_honoured_s ({self.max_honoured_s}) must not be below ceiling_s "
                f"({self.ceiling_s})"
            )


@dataclass(frozen=True, slots=True)
class Response:
    """What the schedule needs from one poll.

    :param ok: a ``200`` with a usable document, or a ``304``.
    :param fresh_s: remaining freshness (``max-age`` minus ``Age``), ``None`` without one.
    :param retry_after_s: the ``Retry-After`` delay, ``None`` without one.
    """

    ok: bool
    fresh_s: float | None = None
    retry_after_s: float | None = None


def next_delay_s(
    policy: PollPolicy, response: Response, failures: int, rng: random.Random
) -> float:
    """Seconds until the next poll.

    :param failures: consecutive failed polls, this one included (0 after a success).
    """
    if response.ok:
        if response.fresh_s is None:
            delay = min(policy.default_interval_s, policy.ceiling_s)
        else:
            delay = min(response.fresh_s, policy.max_honoured_s)
        delay = max(delay, policy.floor_s)
    else:
        exponent = min(max(failures, 1) - 1, 30)
        delay = max(min(policy.backoff_base_s * 2.0**exponent, policy.ceiling_s), policy.floor_s)
        if response.retry_after_s is not None:
            delay = max(delay, min(response.retry_after_s, policy.max_honoured_s))
    return delay * (1.0 + policy.jitter_ratio * rng.random())


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3: delay-seconds or an HTTP-date) as seconds from now.

    :returns: ``None`` when absent or unreadable; a date in the past gives ``0``.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
