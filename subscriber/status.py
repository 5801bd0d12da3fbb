"""What one verifier knows about itself, as its background tasks report it, and what it tells.

In: the stream follower's callbacks (an event applied, a freshness record, each read's
success or failure, a Redis error), the refresher's adopted snapshots, a background task's
death. Out: :class:`~subscriber.health.Health`, the presence heartbeat record, the
``keyherald_state`` and lag/version gauges, one log line per change, and the ``dirty`` event
that makes the heartbeat republish at once. Whether the verifier is live is decided by
:class:`~subscriber.liveness.Liveness`; no I/O here either.
"""

import asyncio
import logging
import math
import os
import socket

from .clock import Clock
from .events import Event
from .health import Health, State
from .history import Freshness, KeySetSnapshot
from .keyset import KeySet
from .liveness import Liveness
from .metrics import Metrics
from .presence import HeartbeatRecord
from .redis_tls import tls_failure

logger = logging.getLogger(__name__)


class VerifierStatus:
    """One verifier's reported state: liveness, lag, the last Redis error, restarts."""

    def __init__(
        self,
        *,
        issuer: str,
        instance_id: str,
        keyset: KeySet,
        liveness: Liveness,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._issuer, self._instance_id = issuer, instance_id
        self._keyset, self._liveness, self._clock = keyset, liveness, clock
        self._metrics = metrics
        self._lag_gauge = metrics.child(metrics.stream_lag, issuer)
        self._version_gauge = metrics.child(metrics.keyset_version, issuer)
        #: Set on every change the heartbeat should publish at once.
        self.dirty = asyncio.Event()
        self.last_event_ts: float | None = None
        self.lag_s: float | None = None
        self.restarts = 0
        #: The stream's last Redis error while it lasts.
        self.redis_error: str | None = None

    # -- in --------------------------------------------------------------------------------

    async def after_adopt(self, now: float, changed: bool, snapshot: KeySetSnapshot) -> None:
        """The refresher fetched ``snapshot`` (and adopted it if ``changed``)."""
        if snapshot.freshness_interval_s is not None:
            self._liveness.announce_interval(snapshot.freshness_interval_s)
        view = self._keyset.view
        if (view.epoch, view.version, view.digest) == (
            snapshot.epoch,
            snapshot.version,
            snapshot.digest,
        ):
            self._liveness.confirm(snapshot.iat)
        if changed:
            self._version_gauge.set(self._keyset.version)
            self.dirty.set()

    def on_fresh(self, record: Freshness) -> None:
        """A signed freshness record matched the key set held."""
        if self._liveness.on_fresh(record.ts):
            self.dirty.set()
            logger.info("verifier live (fresh at %s)", record.ts)

    def on_redis_error(self, error: BaseException) -> None:
        """The stream's Redis failed with ``error``; logged once per distinct error."""
        # The server's own words: redis-py names the error class only from 8.x on.
        tls = tls_failure(error)
        if "max number of clients reached" in str(error).lower():
            message = "maxclients: Redis refused the connection (max number of clients reached)"
        elif tls is not None:
            message = f"{tls.reason}: {tls}"
        else:
            message = f"{type(error).__name__}: {error}"
        if message != self.redis_error:
            logger.warning("Redis error: %s", message, extra={"instance_id": self._instance_id})
        self.redis_error = message

    def on_connected(self, connected: bool) -> None:
        """The follower's latest read succeeded or failed."""
        # Called on every XREAD reply too: that is where a silent stream (no freshness record
        # within the bound) turns the verifier degraded and wakes the poller.
        liveness = self._liveness
        changed = liveness.set_connected(connected)
        if connected:
            self.redis_error = None
        if connected and liveness.failure is not None:
            liveness.failure = None
            logger.warning("stream follower recovered", extra={"instance_id": self._instance_id})
        if not changed:
            return
        self.dirty.set()
        state = self.publish_state()
        logger.log(
            logging.INFO if connected else logging.WARNING,
            "verifier %s",
            state,
            extra={"version": self._keyset.version, "instance_id": self._instance_id},
        )

    def on_applied(self, event: Event, now: float) -> None:
        """The follower applied ``event`` at ``now``."""
        self.last_event_ts = event.ts
        self.lag_s = max(0.0, now - event.ts)
        self._lag_gauge.set(self.lag_s)
        self._version_gauge.set(event.version)
        self.dirty.set()

    def on_task_death(self, name: str, error: BaseException) -> None:
        """A supervised background task died (it is being restarted)."""
        self.restarts += 1
        if name != "follower":
            return
        # Nothing follows the stream any more: stop claiming to, so the poller takes over and
        # readiness probes (and the issuer's confirmed gate, through the heartbeat) see it.
        self._liveness.failure = f"follower died: {type(error).__name__}"
        self.on_connected(False)
        self.publish_state()
        self.dirty.set()

    # -- out -------------------------------------------------------------------------------

    def publish_state(self) -> State:
        """The state now, also set on the ``keyherald_state`` gauge."""
        state = self._liveness.state()
        self._metrics.set_state(self._issuer, state)
        return state

    def health(self, heartbeat_error: str | None) -> Health:
        """See :meth:`Verifier.health`."""
        view, liveness = self._keyset.view, self._liveness
        return Health(
            state=self.publish_state(),
            version=view.version,
            epoch=view.epoch,
            kids=dict(view.states),
            lag_s=self.lag_s,
            last_event_at=self.last_event_ts,
            confirmed_at=liveness.confirmed_at if math.isfinite(liveness.confirmed_at) else None,
            instance_id=self._instance_id,
            restarts=self.restarts,
            failure=liveness.failure,
            heartbeat_error=heartbeat_error,
            fresh_at=liveness.fresh_at if math.isfinite(liveness.fresh_at) else None,
            freshness_bound_s=liveness.bound_s,
            redis_error=self.redis_error,
        )

    def heartbeat_record(self, service: str | None) -> HeartbeatRecord:
        """See :meth:`Verifier.heartbeat_record`."""
        view = self._keyset.view
        return HeartbeatRecord(
            instance_id=self._instance_id,
            service=service,
            host=socket.gethostname(),
            pid=os.getpid(),
            state=self.publish_state(),
            epoch=view.epoch,
            version=view.version,
            kids=dict(view.first_held),
            lag_ms=None if self.lag_s is None else round(self.lag_s * 1000, 3),
            last_event_ts=self.last_event_ts,
            updated_at=self._clock(),
        )
