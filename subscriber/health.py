"""What a verifier reports about itself: ``Verifier.health()`` and the ``keyherald_state`` gauge.

- ``live``: following the stream, and the issuer's newest signed freshness record (or snapshot)
  matches the key set held and is younger than the freshness bound; an unknown ``kid`` is
  refused at once, with no network.
- ``degraded``: the stream is unreachable, or silent past the freshness bound (withheld
  events, a dead issuer, a stuck connection); the last known-good keys keep verifying, the
  signed snapshot is polled, and an unknown ``kid`` may trigger one background refresh per
  cooldown.
- ``failed``: the stream follower died (a bug, an incompatible dependency) and is being
  restarted with backoff; the verifier behaves as ``degraded`` until it follows again.
- ``stale``: nothing confirmed the key set (freshness record or snapshot) for
  ``max_staleness_s``; tokens are refused (``keys_stale``) unless
  ``stale_policy="keep_verifying"``.
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
