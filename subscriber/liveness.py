"""Whether a verifier is ``live``, ``degraded``, ``failed`` or ``stale``: pure state and a clock.

The verifier is **live** while it follows the stream (``connected``) and the issuer's newest
signed freshness record (or snapshot) matching the key set held is younger than the freshness
bound. The bound is ``freshness_intervals_allowed`` times the interval the issuer announces,
plus the leeway, unless the caller fixed it. Keys are **stale** once nothing confirmed them for
``max_staleness_s``. No I/O here: the follower and the refresher report what they see, and the
``degraded`` event wakes the snapshot poller whenever the verifier is not live.

Fields are plain attributes written by the event loop and read by ``verify()`` on any thread;
each write is a single, atomic assignment.
"""

import asyncio
import math

from . import constants
from .clock import Clock
from .health import State


class Liveness:
    """One verifier's freshness and connection state.

    :param leeway_s: added to the announced interval times the intervals allowed.
    :param max_staleness_s: keys unconfirmed for longer than this are ``stale``.
    :param fixed_bound_s: a freshness bound that overrides the announced interval.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        leeway_s: float,
        max_staleness_s: float,
        fixed_bound_s: float | None = None,
    ) -> None:
        self._clock = clock
        self._leeway_s = leeway_s
        self._max_staleness_s = max_staleness_s
        self._fixed_bound_s = fixed_bound_s
        #: Following the stream (the last read succeeded).
        self.connected = False
        #: The issuer's time in the newest signed record that matched the key set held.
        self.fresh_at = -math.inf
        #: Past this age of ``fresh_at``, the verifier is not live.
        self.bound_s = self.bound_for(constants.freshness_interval_s)
        #: When the key set was last confirmed current, by this verifier's clock.
        self.confirmed_at = -math.inf
        #: Why the stream follower is down (it died and is being restarted), else ``None``.
        self.failure: str | None = None
        #: Set whenever the verifier is not live: the snapshot poller waits on it.
        self.degraded = asyncio.Event()

    def bound_for(self, interval_s: float) -> float:
        """The freshness bound for an issuer that writes a record every ``interval_s``."""
        if self._fixed_bound_s is not None:
            return self._fixed_bound_s
        return constants.freshness_intervals_allowed * interval_s + self._leeway_s

    def announce_interval(self, interval_s: float) -> None:
        """The issuer announced (in its metadata or a snapshot) its freshness interval."""
        self.bound_s = self.bound_for(interval_s)

    def is_live(self, now: float | None = None) -> bool:
        """Following the stream, with a freshness record younger than the bound."""
        now = self._clock() if now is None else now
        return self.connected and now - self.fresh_at <= self.bound_s

    def confirm(self, issued_at: float) -> None:
        """The issuer vouched at ``issued_at`` for the key set we hold."""
        self.fresh_at = max(self.fresh_at, issued_at)
        self.confirmed_at = self._clock()
        if self.connected:
            self.degraded.clear()

    def confirm_unsigned(self, now: float) -> None:
        """Keys were fetched at ``now`` from a source that vouches for no freshness (the
        provider's own JWKS): they are not stale, but the verifier is no more live."""
        self.confirmed_at = now

    def on_fresh(self, issued_at: float) -> bool:
        """A signed freshness record of ``issued_at`` matched; returns whether this made the
        verifier live."""
        was_live = self.is_live(self._clock())
        self.confirm(issued_at)
        return not was_live and self.is_live(self._clock())

    def set_connected(self, connected: bool) -> bool:
        """The follower's latest read succeeded or failed; returns whether that changed.

        Called on every read, since a silent stream turns the verifier degraded by itself.
        """
        changed = connected != self.connected
        self.connected = connected
        if self.is_live():
            self.degraded.clear()
        else:
            self.degraded.set()
        return changed

    def state(self) -> State:
        """``live``, ``stale``, ``failed`` or ``degraded``, in that order of precedence."""
        if self.is_live():
            return "live"
        if self._clock() - self.confirmed_at > self._max_staleness_s:
            return "stale"
        return "failed" if self.failure is not None else "degraded"
