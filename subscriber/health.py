"""What a verifier reports about itself: ``Verifier.health()`` and the ``keyherald_state`` gauge.

- ``live``: following the stream, with a signed freshness record younger than the bound.
- ``degraded``: the stream is unreachable or silent; the signed snapshot is polled.
- ``failed``: the stream follower died and is being restarted; behaves as ``degraded``.
- ``stale``: nothing confirmed the key set for the maximum staleness; tokens are refused by
  default.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

State = Literal["live", "degraded", "failed", "stale"]


@dataclass(frozen=True, slots=True)
class Health:
    """A verifier's view of itself, for readiness probes and dashboards.

    :param kids: every kid the key set knows, with its state (gone keys included).
    :param lag_s: issuer commit to this verifier applying the last event.
    :param confirmed_at: when the key set was last confirmed current (a signed freshness
        record or snapshot that matches it), by this verifier's clock.
    :param restarts: background loops (follower, poller, heartbeat) restarted after dying.
    :param failure: why the state is ``failed`` (the follower's error type), else ``None``.
    :param heartbeat_error: why the last heartbeat could not be written (e.g. Redis is a
        read-only replica), or ``None`` once one is written.
    :param fresh_at: the issuer's time in the newest signed freshness record or snapshot that
        matched the key set held; ``live`` needs it younger than ``freshness_bound_s``.
    """

    state: State
    version: int
    epoch: str | None
    kids: Mapping[str, str]
    lag_s: float | None
    last_event_at: float | None
    confirmed_at: float | None
    instance_id: str
    restarts: int = 0
    failure: str | None = None
    heartbeat_error: str | None = None
    fresh_at: float | None = None
    freshness_bound_s: float | None = None
    #: The last Redis error of the stream while it lasts (``None`` once a read succeeds),
    #: e.g. ``"maxclients: Redis refused the connection (max number of clients reached)"``.
    redis_error: str | None = None
