"""The key lifecycle as pure functions of (key records, policy, now); no I/O, no clock.

Rules (see ``docs/protocol.md``):

- *bootstrap*: no active key (an empty store) -> a new key is added and activated at once;
- *add*: the active key has been active for ``rotation_period - lead`` and nothing is pending
  -> a new pending key, planned to activate when the period ends (never sooner than ``lead``);
- *activate*: a pending key reached its planned time and has been published for ``lead`` ->
  it becomes active, the active key becomes retiring until ``now + retire_grace``;
- *retire*: a retiring key reached ``retire_at`` -> retired (gone from the JWKS).

Operators may also add a key, activate or retire one early (never before it is safe) and revoke
one (at once; the active key is replaced at once). Each builder returns a :class:`Change`: the
records to write and the events to announce, in order. The caller assigns versions and signs.
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from subscriber.events import KEY_ACTIVATED, KEY_ADDED, KEY_RETIRED

from .errors import IllegalTransition, UnknownKey
from .policy import RotationPolicy
from .records import ACTIVE, PENDING, RETIRED, RETIRING, REVOKED, KeyRecord

Keys = Mapping[str, KeyRecord]

BOOTSTRAP: Final = "bootstrap"
ADD: Final = "add"
ACTIVATE: Final = "activate"
RETIRE: Final = "retire"
# Among transitions due at the same instant: drop what expired first, then swap, then add.
_ORDER = {BOOTSTRAP: 0, RETIRE: 1, ACTIVATE: 2, ADD: 3}


@dataclass(frozen=True, slots=True)
class Transition:
    """A scheduled step: ``action`` on ``kid`` (``None`` for a key not generated yet) at ``at``."""

    action: str
    at: float
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event to announce, before it gets its version, epoch and signature."""

    type: str
    kid: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """Records to write and events to append, atomically and in this order."""

    records: tuple[KeyRecord, ...]
    events: tuple[EventSpec, ...]


@dataclass(frozen=True, slots=True)
class NewKey:
    """A generated key, ready to be recorded: public JWK and sealed private part."""

    kid: str
    alg: str
    jwk: Mapping[str, Any]
    sealed: Mapping[str, str]


def active_key(keys: Keys) -> KeyRecord | None:
    """The key that signs, if any."""
    return next((k for k in keys.values() if k.state == ACTIVE), None)


def earliest_activation(key: KeyRecord, policy: RotationPolicy) -> float:
    """When a pending key may sign: its planned time, never before ``created_at + lead``."""
    planned = key.activate_at if key.activate_at is not None else key.created_at
    return max(planned, key.created_at + policy.lead_s)


def scheduled(keys: Keys, policy: RotationPolicy, now: float) -> list[Transition]:
    """Every transition the current records call for, earliest first (past ones are overdue)."""
    active = active_key(keys)
    if active is None:
        return [Transition(BOOTSTRAP, now)]
    found: list[Transition] = []
    pending = [k for k in keys.values() if k.state == PENDING]
    for key in keys.values():
        if key.state == RETIRING and key.retire_at is not None:
            found.append(Transition(RETIRE, key.retire_at, key.kid))
    found.extend(Transition(ACTIVATE, earliest_activation(k, policy), k.kid) for k in pending)
    if not pending:
        started = active.activated_at if active.activated_at is not None else active.created_at
        found.append(Transition(ADD, started + policy.rotation_period_s - policy.lead_s))
    found.sort(key=lambda t: (t.at, _ORDER[t.action], t.kid or ""))
    return found


def due(
    keys: Keys, policy: RotationPolicy, now: float, *, held: Collection[str] = ()
) -> Transition | None:
    """The first transition due at ``now``, or ``None``. Apply it, then ask again.

    :param held: kids whose activation is held back (the ``confirmed`` activation gate);
        other transitions still proceed. Holding an activation never shortens a grace: the
        previous key's retirement is counted from the moment the activation does happen.
    """
    for transition in scheduled(keys, policy, now):
        if transition.at > now:
            return None
        if transition.action == ACTIVATE and transition.kid in held:
            continue
        return transition
    return None


def next_at(keys: Keys, policy: RotationPolicy, now: float) -> float:
    """When the next transition is due (``now`` if one is overdue)."""
    return max(scheduled(keys, policy, now)[0].at, now)


def _get(keys: Keys, kid: str) -> KeyRecord:
    try:
        return keys[kid]
    except KeyError:
        raise UnknownKey(kid) from None


def _added(key: KeyRecord) -> EventSpec:
    return EventSpec(
        KEY_ADDED,
        key.kid,
        {"jwk": dict(key.jwk), "alg": key.alg, "activate_at": key.activate_at,
         "retire_at": key.retire_at},
    )  # fmt: skip


def add(
    keys: Keys, new: NewKey, policy: RotationPolicy, now: float, *, activate_at: float | None = None
) -> Change:
    """Publish ``new`` as a pending key.

    :param activate_at: planned activation; default is the end of the active key's period,
        and never sooner than ``now + lead``.
    """
    if new.kid in keys:
        raise IllegalTransition(f"kid {new.kid!r} already exists")
    if activate_at is None:
        active = active_key(keys)
        started = active.activated_at if active and active.activated_at is not None else now
        activate_at = started + policy.rotation_period_s
    activate_at = max(activate_at, now + policy.lead_s)
    key = KeyRecord(
        kid=new.kid, alg=new.alg, state=PENDING, created_at=now, activate_at=activate_at,
        retire_at=activate_at + policy.rotation_period_s + policy.retire_grace_s,
        jwk=new.jwk, sealed=new.sealed,
    )  # fmt: skip
    return Change((key,), (_added(key),))


def _swap(keys: Keys, key: KeyRecord, policy: RotationPolicy, now: float) -> Change:
    """``key`` becomes active; the current active key (if any) starts retiring."""
    records: list[KeyRecord] = []
    previous = active_key(keys)
    previous_retire_at: float | None = None
    if previous is not None and previous.kid != key.kid:
        previous_retire_at = now + policy.retire_grace_s
        records.append(
            replace(previous, state=RETIRING, deactivated_at=now, retire_at=previous_retire_at)
        )
    records.append(
        replace(key, state=ACTIVE, activate_at=now, activated_at=now,
                retire_at=now + policy.rotation_period_s + policy.retire_grace_s)
    )  # fmt: skip
    data = {
        "previous_kid": records[0].kid if previous_retire_at is not None else None,
        "previous_retire_at": previous_retire_at,
    }
    return Change(tuple(records), (EventSpec(KEY_ACTIVATED, key.kid, data),))


def bootstrap(keys: Keys, new: NewKey, policy: RotationPolicy, now: float) -> Change:
    """No key signs (empty store): publish ``new`` and activate it at once."""
    if active_key(keys) is not None:
        raise IllegalTransition("a key is already active; bootstrap is for an empty key set")
    key = _published_now(keys, new, policy, now)
    swapped = _swap(keys, key, policy, now)
    return Change(swapped.records, (_added(key), *swapped.events))


def _published_now(keys: Keys, new: NewKey, policy: RotationPolicy, now: float) -> KeyRecord:
    """``new`` as a pending record planned to activate at once (bootstrap, revocation)."""
    key = add(keys, new, policy, now).records[0]
    return replace(
        key, activate_at=now, retire_at=now + policy.rotation_period_s + policy.retire_grace_s
    )


def activate(keys: Keys, kid: str, policy: RotationPolicy, now: float) -> Change:
    """Make pending key ``kid`` the active key; the active key starts retiring.

    :raises IllegalTransition: ``kid`` is not pending, or was published less than ``lead`` ago
        (verifiers may not know it yet).
    """
    key = _get(keys, kid)
    if key.state != PENDING:
        raise IllegalTransition(f"key {kid!r} is {key.state}; only a pending key can activate")
    ready = key.created_at + policy.lead_s
    if now < ready:
        raise IllegalTransition(
            f"key {kid!r} was published at {key.created_at:.0f} and may sign from {ready:.0f} "
            f"(lead {policy.lead_s:g} s); now is {now:.0f}"
        )
    return _swap(keys, key, policy, now)


def retire(keys: Keys, kid: str, policy: RotationPolicy, now: float) -> Change:
    """End a key's life normally: withdraw a pending key, or drop a retiring key whose grace
    is over.

    :raises IllegalTransition: the key is active (activate another first, or revoke), still in
        its grace period (revoke it to remove it now), or already gone.
    """
    key = _get(keys, kid)
    if key.state == ACTIVE:
        raise IllegalTransition(f"key {kid!r} is active; activate another key first, or revoke it")
    if key.state in (RETIRED, REVOKED):
        raise IllegalTransition(f"key {kid!r} is already {key.state}")
    if key.state == RETIRING and key.retire_at is not None and now < key.retire_at:
        raise IllegalTransition(
            f"key {kid!r} verifies live tokens until {key.retire_at:.0f}; now is {now:.0f}. "
            "Revoke it to remove it at once."
        )
    ended = replace(key, state=RETIRED, retire_at=now, ended_at=now, reason="expired")
    return Change((ended,), (EventSpec(KEY_RETIRED, kid, {"reason": "expired"}),))


def revoke(
    keys: Keys, kid: str, policy: RotationPolicy, now: float, replacement: NewKey | None = None
) -> Change:
    """Remove ``kid`` at once. If it was active, the next pending key (earliest planned)
    activates at once; if none is pending, ``replacement`` is published and activated.

    :raises IllegalTransition: the key is already retired or revoked, or it is active with no
        pending key and no ``replacement``.
    """
    key = _get(keys, kid)
    if key.state in (RETIRED, REVOKED):
        raise IllegalTransition(f"key {kid!r} is already {key.state}")
    ended = replace(key, state=REVOKED, retire_at=now, ended_at=now, reason="revoked")
    gone = Change((ended,), (EventSpec(KEY_RETIRED, kid, {"reason": "revoked"}),))
    if key.state != ACTIVE:
        return gone
    remaining = {k: (ended if k == kid else v) for k, v in keys.items()}
    pending = sorted(
        (k for k in remaining.values() if k.state == PENDING),
        key=lambda k: (earliest_activation(k, policy), k.kid),
    )
    events = gone.events
    if pending:
        successor = pending[0]
    elif replacement is not None:
        successor = _published_now(remaining, replacement, policy, now)
        events += (_added(successor),)
    else:
        raise IllegalTransition(f"key {kid!r} is active and no key could replace it")
    # The revoked key is not "previous": it does not retire gracefully, it is gone already.
    swapped = _swap(remaining, successor, policy, now)
    return Change((ended, *swapped.records), events + swapped.events)


def needs_new_key(keys: Keys, transition: Transition) -> bool:
    """Whether applying ``transition`` requires a freshly generated key."""
    return transition.action in (ADD, BOOTSTRAP)


def apply(
    keys: Keys, transition: Transition, policy: RotationPolicy, now: float, new: NewKey | None
) -> Change:
    """Build the change for a scheduled ``transition`` (``new`` for add/bootstrap)."""
    if transition.action in (ADD, BOOTSTRAP):
        if new is None:
            raise ValueError(f"{transition.action} needs a new key")
        return (bootstrap if transition.action == BOOTSTRAP else add)(keys, new, policy, now)
    assert transition.kid is not None
    if transition.action == ACTIVATE:
        return activate(keys, transition.kid, policy, now)
    return retire(keys, transition.kid, policy, now)


def updated(keys: Keys, change: Change) -> dict[str, KeyRecord]:
    """``keys`` with ``change`` applied."""
    result = dict(keys)
    result.update((r.kid, r) for r in change.records)
    return result


def plan(keys: Keys, policy: RotationPolicy, now: float, *, count: int = 6) -> list[Transition]:
    """The next ``count`` transitions if nobody intervenes, simulated on the pure rules.

    Keys that do not exist yet appear with ``kid=None``.
    """
    state = dict(keys)
    steps: list[Transition] = []
    placeholder = 0
    while len(steps) < count:
        step = scheduled(state, policy, now)[0]
        at = now = max(step.at, now)
        new = None
        if needs_new_key(state, step):
            placeholder += 1
            new = NewKey(kid=f"\0planned-{placeholder}", alg=policy.algorithm, jwk={}, sealed={})
        state = updated(state, apply(state, step, policy, at, new))
        kid = None if step.kid is None or step.kid.startswith("\0") else step.kid
        steps.append(Transition(step.action, at, kid))
    return steps
