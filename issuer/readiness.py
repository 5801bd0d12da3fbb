"""Which live verifiers hold a key, and whether a due activation may go ahead.

Every fixed-delay rotation scheme hopes that verifiers refreshed in time. keyherald's verifiers
report the keys they hold (heartbeats, see ``docs/protocol.md``), so the issuer can *know*:
with the ``confirmed`` gate, a pending key activates only once every live verifier holds it, or
when the maximum wait runs out. The decision is a pure function of the heartbeat records, the
gate settings and ``now``; :func:`read_readiness` is the only part that touches Redis.
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis

from subscriber.presence import live_verifiers

logger = logging.getLogger(__name__)

GATE_TIME: Final = "time"
GATE_CONFIRMED: Final = "confirmed"
GATES: Final = (GATE_TIME, GATE_CONFIRMED)
ON_TIMEOUT_ACTIVATE: Final = "activate"
ON_TIMEOUT_WAIT: Final = "wait"
ON_TIMEOUT: Final = (ON_TIMEOUT_ACTIVATE, ON_TIMEOUT_WAIT)


@dataclass(frozen=True, slots=True)
class VerifierHolding:
    """One live verifier and whether (and since when) it holds the key."""

    instance_id: str
    service: str | None
    state: str
    version: int | None
    holds: bool
    since: float | None


@dataclass(frozen=True, slots=True)
class Readiness:
    """The live verifiers for ``kid``; ``ready`` when every one of them holds it."""

    kid: str
    verifiers: tuple[VerifierHolding, ...]

    @property
    def ready(self) -> bool:
        return all(v.holds for v in self.verifiers)

    @property
    def lagging(self) -> tuple[str, ...]:
        """Instance ids of live verifiers that do not hold the key yet."""
        return tuple(v.instance_id for v in self.verifiers if not v.holds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "ready": self.ready,
            "live_verifiers": len(self.verifiers),
            "lagging": list(self.lagging),
            "verifiers": [
                {
                    "instance_id": v.instance_id,
                    "service": v.service,
                    "state": v.state,
                    "version": v.version,
                    "holds": v.holds,
                    "since": v.since,
                }
                for v in self.verifiers
            ],
        }


def readiness(kid: str, records: Iterable[Mapping[str, Any]]) -> Readiness:
    """Build :class:`Readiness` for ``kid`` from live heartbeat records."""
    holdings = []
    for record in records:
        kids = record.get("kids")
        since = kids.get(kid) if isinstance(kids, Mapping) else None
        holdings.append(
            VerifierHolding(
                instance_id=str(record.get("instance_id")),
                service=record.get("service"),
                state=str(record.get("state")),
                version=record.get("version"),
                holds=since is not None,
                since=float(since) if isinstance(since, int | float) else None,
            )
        )
    holdings.sort(key=lambda h: h.instance_id)
    return Readiness(kid, tuple(holdings))


async def read_readiness(redis: aioredis.Redis, issuer: str, kid: str, now: float) -> Readiness:
    """Readiness of ``kid`` among the verifiers live at ``now``."""
    return readiness(kid, await live_verifiers(redis, issuer, now))


@dataclass(frozen=True, slots=True)
class ActivationGate:
    """When a due activation may go ahead.

    :param mode: ``time`` activates at the planned time; ``confirmed`` also waits until every
        live verifier holds the key.
    :param max_wait_s: how long ``confirmed`` waits past the planned time.
    :param on_timeout: past ``max_wait_s``, ``activate`` anyway (with a warning) or ``wait``
        (and alert) until the verifiers catch up or an operator acts.
    :raises ValueError: an unknown mode or timeout action, or a negative wait.
    """

    mode: str = GATE_TIME
    max_wait_s: float = 3_600.0
    on_timeout: str = ON_TIMEOUT_ACTIVATE

    def __post_init__(self) -> None:
        if self.mode not in GATES:
            raise ValueError(f"activation gate must be one of {GATES}, the input is {self.mode!r}")
        if self.on_timeout not in ON_TIMEOUT:
            raise ValueError(
                f"gate timeout action must be one of {ON_TIMEOUT}, the input is {self.on_timeout!r}"
            )
        if self.max_wait_s < 0:
            raise ValueError(f"gate max wait must not be negative, the input is {self.max_wait_s}")

    def decide(self, ready: "Readiness | None", *, due_at: float, now: float) -> "GateDecision":
        """:func:`gate_decision` with this gate's settings."""
        return gate_decision(
            self.mode,
            ready,
            due_at=due_at,
            now=now,
            max_wait_s=self.max_wait_s,
            on_timeout=self.on_timeout,
        )


DEFAULT_GATE: Final = ActivationGate()


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Whether a due activation goes ahead now, and whether that deserves a warning."""

    activate: bool
    #: Activating although some live verifier does not hold the key (max wait expired).
    forced: bool = False
    #: Still holding back past the maximum wait (``on_timeout = "wait"``): alert the operator.
    overdue: bool = False


def gate_decision(
    gate: str,
    ready: Readiness | None,
    *,
    due_at: float,
    now: float,
    max_wait_s: float,
    on_timeout: str,
) -> GateDecision:
    """Decide a due activation.

    :param gate: ``time`` activates at the planned time; ``confirmed`` waits for ``ready``.
    :param ready: readiness of the key (ignored, and may be ``None``, for the ``time`` gate).
    :param due_at: when the activation was planned; the wait is measured from it.
    """
    if gate == GATE_TIME:
        return GateDecision(activate=True)
    if ready is None:
        raise ValueError("the confirmed gate needs the key's readiness")
    if ready.ready:
        return GateDecision(activate=True)
    if now < due_at + max_wait_s:
        return GateDecision(activate=False)
    if on_timeout == ON_TIMEOUT_ACTIVATE:
        return GateDecision(activate=True, forced=True)
    return GateDecision(activate=False, overdue=True)


class GateWatch:
    """Applies an :class:`ActivationGate` to the activations due now, and tells the operator.

    Each kid's situation (waiting, forced, overdue) is logged once when it changes, not on every
    scheduler tick.
    """

    def __init__(self, gate: ActivationGate) -> None:
        self.gate = gate
        self._noted: dict[str, str] = {}

    async def held(
        self,
        redis: aioredis.Redis,
        issuer: str,
        due: Iterable[tuple[str, float]],
        now: float,
    ) -> frozenset[str]:
        """Kids among ``due`` ((kid, planned time) pairs) whose activation must wait."""
        held: set[str] = set()
        for kid, due_at in due:
            ready = await read_readiness(redis, issuer, kid, now)
            decision = self.gate.decide(ready, due_at=due_at, now=now)
            self._note(kid, decision, ready, now - due_at)
            if not decision.activate:
                held.add(kid)
        return frozenset(held)

    def _note(self, kid: str, decision: GateDecision, ready: Readiness, waited_s: float) -> None:
        if decision.forced:
            kind, level = "forced", logging.WARNING
            text = "activating %s although verifiers %s do not hold it (waited %.0f s)"
        elif decision.overdue:
            kind, level = "overdue", logging.ERROR
            text = "activation of %s is overdue: verifiers %s do not hold it (waited %.0f s)"
        elif not decision.activate:
            kind, level = "waiting", logging.INFO
            text = "activation of %s waits for verifiers %s (waited %.0f s)"
        else:
            self._noted.pop(kid, None)
            return
        if self._noted.get(kid) == kind:
            return
        self._noted[kid] = kind
        lagging = ", ".join(ready.lagging)
        fields = {"kid": kid, "lagging": list(ready.lagging), "gate": kind}
        logger.log(level, text, kid, lagging, waited_s, extra=fields)
