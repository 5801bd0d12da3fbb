"""Time, injected: every component takes a ``Clock`` so tests never sleep through real time."""

import time
from collections.abc import Callable

#: Seconds since the Unix epoch, as ``time.time`` returns them.
Clock = Callable[[], float]

system_clock: Clock = time.time


class ManualClock:
    """A clock that moves only when told to; for tests and simulations."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back, the input is {seconds!r}")
        self.now += seconds
        return self.now

    def set(self, when: float) -> None:
        """Jump to ``when`` (never backwards)."""
        self.advance(when - self.now)
