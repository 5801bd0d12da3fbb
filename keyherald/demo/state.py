"""What the demo has seen so far: pure bookkeeping, fed by the orchestrator, read by the view.

Nothing here does I/O, so the counting rules (what is a rotation, when has a revocation reached
every verifier) are plain functions of the events and snapshots given to it.
"""

import time
from dataclasses import dataclass, field
from typing import Any

from subscriber.events import KEY_ACTIVATED, KEY_RETIRED, Event

from ..observe import Heartbeat


@dataclass
class Revocation:
    """The demo's one emergency revocation and how far it got."""

    kid: str
    requested_at: float
    published_at: float | None = None
    #: When every live verifier's heartbeat first showed the key gone.
    reached_all_at: float | None = None
    verifiers: int = 0
    #: service -> when its ``/healthz`` first showed the key revoked (polled every few ms:
    #: a much tighter bound than heartbeats).
    cache_dropped_at: dict[str, float] = field(default_factory=dict)

    @property
    def cache_drop_s(self) -> float | None:
        """From the issuer committing the revocation to the last verifier's cache dropping
        the key (an upper bound: it includes one ``/healthz`` round trip)."""
        if not self.cache_dropped_at or self.published_at is None:
            return None
        return max(self.cache_dropped_at.values()) - self.published_at

    @property
    def propagation_s(self) -> float | None:
        """From the request to the last verifier's heartbeat without the key (an upper bound:
        heartbeats are periodic)."""
        if self.reached_all_at is None:
            return None
        return self.reached_all_at - self.requested_at


@dataclass
class DemoState:
    """Everything the live view and the summary show."""

    rotations_wanted: int
    started_at: float = field(default_factory=time.time)
    events: list[Event] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    verifiers: list[Heartbeat] = field(default_factory=list)
    loadgen: dict[str, Any] = field(default_factory=dict)
    partner: dict[str, Any] = field(default_factory=dict)
    rotations: int = 0
    retirements: int = 0
    revocation: Revocation | None = None
    phase: str = "starting"
    refused_events: int = 0
    #: kids revoked, as the stream announced them.
    revoked: set[str] = field(default_factory=set)
    messages: list[tuple[float, str]] = field(default_factory=list)
    #: ``--upstream``: the watcher's request counts and the measured arrivals (None otherwise).
    upstream: dict[str, Any] | None = None

    def note(self, message: str) -> None:
        """A line for the live view's log and the plain output."""
        self.messages.append((time.time(), message))

    def apply(self, event: Event) -> None:
        """Count one verified stream event."""
        self.events.append(event)
        if event.type == KEY_RETIRED:
            if event.data.get("reason") == "revoked":
                self.revoked.add(event.kid)
                if self.revocation is not None and self.revocation.kid == event.kid:
                    self.revocation.published_at = event.ts
            else:
                self.retirements += 1
        elif event.type == KEY_ACTIVATED and self._is_rotation(event):
            self.rotations += 1

    def _is_rotation(self, event: Event) -> bool:
        # Bootstrap activates with no previous key; a revocation of the active key activates
        # its successor in the same transaction, right after the key-retired event.
        previous = event.data.get("previous_kid")
        if not previous or previous in self.revoked:
            return False
        before = self.events[-2] if len(self.events) >= 2 else None
        return not (
            before is not None
            and before.type == KEY_RETIRED
            and before.data.get("reason") == "revoked"
            and before.version == event.version - 1
        )

    @property
    def version(self) -> int:
        """The key-set version of the last event seen."""
        return self.events[-1].version if self.events else 0

    @property
    def active_kid(self) -> str | None:
        """The issuer's active key, from the last key snapshot."""
        return next((k["kid"] for k in self.keys if k.get("state") == "active"), None)

    def kids_in(self, state: str) -> list[str]:
        """The kids of the last key snapshot in ``state``."""
        return [str(k["kid"]) for k in self.keys if k.get("state") == state]

    def all_verifiers_hold(self, kid: str) -> bool:
        """Whether every live verifier's heartbeat lists ``kid``."""
        return bool(self.verifiers) and all(kid in v.kids for v in self.verifiers)

    def update_revocation(self, now: float) -> None:
        """Mark the revocation as arrived once no live verifier holds the key any more."""
        rev = self.revocation
        if rev is None or rev.reached_all_at is not None or not self.verifiers:
            return
        fresh = [v for v in self.verifiers if (v.updated_at or 0) >= rev.requested_at]
        if len(fresh) == len(self.verifiers) and all(rev.kid not in v.kids for v in fresh):
            rev.reached_all_at = now
            rev.verifiers = len(fresh)

    @property
    def valid_rejected(self) -> int:
        """Tokens minted by a non-revoked key that a verifier refused: must stay 0."""
        return int(self.loadgen.get("valid_rejected", 0))

    @property
    def delivered(self) -> int:
        """Distinct events the partner received and verified."""
        return int(self.partner.get("delivered", 0))

    def summary(self) -> dict[str, Any]:
        """The figures the demo ends with."""
        rev = self.revocation
        return {
            "rotations": self.rotations,
            "rotations_wanted": self.rotations_wanted,
            "events_published": len(self.events),
            "events_refused": self.refused_events,
            "tokens_minted": int(self.loadgen.get("minted", 0)),
            "tokens_verified": int(self.loadgen.get("verified", 0)),
            "tokens_verified_old_key": int(self.loadgen.get("verified_old_key", 0)),
            "rejected_revoked_key": int(self.loadgen.get("revoked_rejected", 0)),
            "valid_tokens_rejected": self.valid_rejected,
            "request_errors": int(self.loadgen.get("errors", 0)),
            "events_delivered_to_partner": self.delivered,
            "partner_out_of_order": int(self.partner.get("out_of_order", 0)),
            "partner_signature_failures": int(self.partner.get("rejected", 0))
            + int(self.partner.get("forged_events", 0)),
            "revoked_kid": rev.kid if rev else None,
            "revocation_reached_verifiers": rev.verifiers if rev else 0,
            "revocation_propagation_s": rev.propagation_s if rev else None,
            "revocation_cache_dropped_s": rev.cache_drop_s if rev else None,
            "elapsed_s": round(time.time() - self.started_at, 1),
            "upstream": self.upstream,
        }

    def succeeded(self) -> bool:
        """Exit 0 only if the run finished its rotations and no valid token was refused."""
        return (
            self.valid_rejected == 0
            and self.rotations >= self.rotations_wanted
            and int(self.loadgen.get("verified", 0)) > 0
        )
