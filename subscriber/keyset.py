"""The verifier's key cache: pure state, no I/O.

A :class:`KeySet` is moved forward by signed events (:meth:`KeySet.apply_event`) and reset from
the issuer's signed snapshot (:meth:`KeySet.replace_from_snapshot`). Readers take
:attr:`KeySet.view`, an immutable snapshot replaced in one assignment, so a verification running
on another thread always sees the usable keys, the gone keys and the version of one and the
same key set.

A key set also owns its verifier's :class:`~subscriber.token_cache.TokenCache`: every new
view, whatever produced it, drops the cached tokens whose key it no longer holds.
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, Final

from .constants import max_ended_kids, max_gone_kids
from .errors import InvalidKey
from .events import KEY_ACTIVATED, KEY_ADDED, KEY_RETIRED, Event
from .history import DigestEntry, KeySetSnapshot, advance, state_digest
from .jwk import PublicKey, load_public_jwk
from .token_cache import TokenCache

logger = logging.getLogger(__name__)

#: Key states that verify; every other state refuses.
USABLE_STATES: Final = frozenset({"pending", "active", "retiring"})
#: Refusal reason for a key that left the key set, by its last state.
GONE_REASONS: Final = {"revoked": "revoked_key", "retired": "retired_key"}

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


class Outcome(Enum):
    """What :meth:`KeySet.apply_event` did with an event."""

    #: The event was the next version and now shows in the view.
    APPLIED = "applied"
    #: The event's version is not newer than ours (a replay, a duplicate, or reordered).
    IGNORED = "ignored"
    #: The event is more than one version ahead: events were missed, resync from the snapshot.
    GAP = "gap"
    #: The event does not continue the history we hold (same version with other content, or
    #: a ``prev``/``digest`` that does not match ours): resync from the snapshot.
    FORK = "fork"
    #: The event belongs to another epoch (the key store was rebuilt): resync.
    NEW_EPOCH = "new_epoch"
    #: The event belongs to an epoch this key set already left behind: a replay, dropped.
    OLD_EPOCH = "old_epoch"


@dataclass(frozen=True, slots=True)
class KeyView:
    """One consistent snapshot of a key set.

    :param keys: kid -> key, for keys that verify (pending, active, retiring).
    :param gone: kid -> refusal reason (``revoked_key`` or ``retired_key``).
    :param states: kid -> lifecycle state, for every kid this key set knows.
    :param first_held: kid -> time this verifier first held the key (seconds since the epoch).
    :param entries: the issuer's usable keys as the state digest sees them.
    :param digest: the state digest of ``(epoch, version, entries)``.
    """

    version: int = 0
    epoch: str | None = None
    keys: Mapping[str, PublicKey] = field(default_factory=_empty)
    gone: Mapping[str, str] = field(default_factory=_empty)
    states: Mapping[str, str] = field(default_factory=_empty)
    first_held: Mapping[str, float] = field(default_factory=_empty)
    entries: Mapping[str, DigestEntry] = field(default_factory=_empty)
    digest: str | None = None


@dataclass(slots=True)
class KeySet:
    """The key cache of one verifier, advanced by signed events in version order and reset
    from signed snapshots.

    :param issuer: the issuer every event and snapshot must belong to (checked by the caller
        that parses them; part of every digest).
    :param tokens: the verified-token cache that this key set invalidates.
    """

    issuer: str
    tokens: TokenCache = field(default_factory=TokenCache)
    #: Epochs this key set has left; events from them are replays and never trigger a resync.
    old_epochs: set[str] = field(default_factory=set)
    _view: KeyView = field(default_factory=KeyView, init=False, repr=False)
    #: Every kid this key set has seen revoked or retired: never trusted again, whatever a
    #: later event, snapshot or epoch says (no revival).
    ended: dict[str, str] = field(default_factory=dict)
    #: Kids in the view that came from an upstream provider's own JWKS (the fallback), not
    #: from a signed event or snapshot: the next snapshot drops them without ending them.
    overlaid: set[str] = field(default_factory=set)

    @property
    def view(self) -> KeyView:
        """The current snapshot; read it once per operation."""
        return self._view

    @view.setter
    def view(self, view: KeyView) -> None:
        # The only way to change the keys, so no future code path can skip the eviction.
        self._view = view
        self.tokens.retain(view.keys)

    @property
    def version(self) -> int:
        return self.view.version

    @property
    def epoch(self) -> str | None:
        return self.view.epoch

    def digest_of(self, epoch: str, version: int, entries: Mapping[str, DigestEntry]) -> str:
        return state_digest(self.issuer, epoch, version, entries.values())

    def apply_event(self, event: Event, now: float) -> Outcome:
        """Apply one verified event if it continues the history we hold.

        Idempotent: applying an event twice, or an older one, returns :attr:`Outcome.IGNORED`
        and changes nothing.
        """
        view = self.view
        refused = self._continuity(event)
        if refused is not None:
            return refused
        entries, digest = self._advanced(view, event)
        if event.digest is not None and digest != event.digest:
            return Outcome.FORK
        keys, gone = dict(view.keys), dict(view.gone)
        states, first_held = dict(view.states), dict(view.first_held)
        self.overlaid.discard(event.kid)  # from now on the signed history speaks for it
        if event.type == KEY_ADDED:
            states[event.kid] = "pending"
            key = self._usable(event.kid, event.data.get("jwk"), event.data.get("alg"))
            if key is not None:
                keys[event.kid] = key
                first_held.setdefault(event.kid, now)
                gone.pop(event.kid, None)
        elif event.type == KEY_ACTIVATED:
            states[event.kid] = "active"
            previous = event.data.get("previous_kid")
            if isinstance(previous, str) and previous in states:
                states[previous] = "retiring"
        elif event.type == KEY_RETIRED:
            state = "revoked" if event.data.get("reason") == "revoked" else "retired"
            self._end(event.kid, state, keys, gone, states, first_held)
        self.view = KeyView(
            version=event.version,
            epoch=view.epoch,
            keys=MappingProxyType(keys),
            gone=MappingProxyType(_cap(gone)),
            states=MappingProxyType(states),
            first_held=MappingProxyType(first_held),
            entries=MappingProxyType(entries),
            digest=digest,
        )
        return Outcome.APPLIED

    def _advanced(
        self, view: KeyView, event: Event
    ) -> tuple[Mapping[str, DigestEntry], str | None]:
        """The entries and digest after ``event``, computed once per process for one state:
        verifiers of one issuer in a process hold the same view and share parsed events, so
        the second one to apply an event reuses the first one's result (same input digest,
        the very same event object)."""
        cache_key = (self.issuer, view.digest, id(event))
        hit = _advanced_cache.get(cache_key)
        if hit is not None and hit[0] is event and view.digest is not None:
            return hit[1], hit[2]
        entries = advance(view.entries, event)
        digest = self.digest_of(view.epoch, event.version, entries) if view.epoch else None
        if len(_advanced_cache) >= _ADVANCED_MAX:
            _advanced_cache.clear()
        _advanced_cache[cache_key] = (event, entries, digest)
        return entries, digest

    def _continuity(self, event: Event) -> Outcome | None:
        """Why ``event`` cannot be applied to our view as the next step, or ``None``."""
        view = self.view
        if event.epoch != view.epoch:
            return Outcome.OLD_EPOCH if event.epoch in self.old_epochs else Outcome.NEW_EPOCH
        if event.version <= view.version:
            forked = event.version == view.version and None not in (event.digest, view.digest)
            if forked and event.digest != view.digest:
                return Outcome.FORK
            return Outcome.IGNORED
        if event.version != view.version + 1:
            return Outcome.GAP
        if event.prev is not None and view.digest is not None and event.prev != view.digest:
            return Outcome.FORK
        return None

    def _usable(self, kid: str, jwk: Any, alg: Any) -> PublicKey | None:
        if kid in self.ended:
            logger.error(
                "key %s was %s earlier: never trusted again",
                kid,
                self.ended[kid],
                extra={"kid": kid},
            )
            return None
        return _load(jwk, kid, alg)

    def _end(
        self,
        kid: str,
        state: str,
        keys: dict[str, PublicKey],
        gone: dict[str, str],
        states: dict[str, str],
        first_held: dict[str, float],
    ) -> None:
        self.ended.setdefault(kid, state)
        _cap(self.ended, max_ended_kids)
        states[kid] = state
        keys.pop(kid, None)
        first_held.pop(kid, None)
        gone[kid] = GONE_REASONS[state]

    def overlay(self, keys: Mapping[str, PublicKey], now: float) -> list[str]:
        """Add ``keys`` (an upstream provider's own JWKS, fetched while the announcer is out of
        reach) to the view as usable, without touching the signed history: version, entries
        and digest stay. Kids held already or ever ended are left out.

        :returns: the kids added.
        """
        view = self.view
        extra = {
            kid: key
            for kid, key in keys.items()
            if kid not in view.keys and kid not in self.ended and kid not in view.gone
        }
        if not extra:
            return []
        self.overlaid.update(extra)
        self.view = replace(
            view,
            keys=MappingProxyType({**view.keys, **extra}),
            states=MappingProxyType({**view.states, **dict.fromkeys(extra, "pending")}),
            first_held=MappingProxyType({**view.first_held, **dict.fromkeys(extra, now)}),
        )
        return sorted(extra)

    def replace_from_snapshot(self, snapshot: KeySetSnapshot, now: float) -> bool:
        """Adopt a verified snapshot unless it would take the key set back.

        Refused: an epoch this key set left, and an older version of our epoch (a rollback).
        Adopted: a newer version, another epoch, or our version with another digest (a fork:
        the snapshot is the issuer's newest word). Kids ever seen revoked or retired stay out.

        :returns: whether the view changed.
        """
        view = self.view
        epoch, version = snapshot.epoch, snapshot.version
        if epoch in self.old_epochs:
            logger.warning("snapshot of an epoch left behind (%s) refused", epoch)
            return False
        if epoch == view.epoch:
            if version < view.version:
                logger.warning(
                    "snapshot version %s is behind ours (%s): rollback refused",
                    version,
                    view.version,
                )
                return False
            if version == view.version and snapshot.digest == view.digest:
                return False
            if version == view.version:
                logger.error("fork at version %s: adopting the signed snapshot", version)
        same_epoch = epoch == view.epoch
        keys: dict[str, PublicKey] = {}
        states: dict[str, str] = {}
        gone = dict(view.gone) if same_epoch else {}
        first_held: dict[str, float] = {}
        # Keys we held that the new set lacks were retired (or revoked) in events we missed.
        held = set(view.keys) - self.overlaid if same_epoch else set()
        self.overlaid.clear()
        for kid in held - {k.kid for k in snapshot.keys}:
            self._end(kid, "retired", keys, gone, states, first_held)
        for kid, state in snapshot.gone.items():
            self._end(kid, state, keys, gone, states, first_held)
        for entry in snapshot.keys:
            states[entry.kid] = entry.state
            key = self._usable(entry.kid, entry.jwk, entry.jwk.get("alg"))
            if key is not None:
                keys[entry.kid] = key
                gone.pop(entry.kid, None)
                first_held[entry.kid] = view.first_held.get(entry.kid, now)
            elif entry.kid in self.ended:
                gone[entry.kid] = GONE_REASONS[self.ended[entry.kid]]
        if not same_epoch and view.epoch is not None:
            self.old_epochs.add(view.epoch)
            logger.warning(
                "key store epoch changed %s -> %s, key set replaced",
                view.epoch,
                epoch,
                extra={"version": version},
            )
        self.view = KeyView(
            version=version,
            epoch=epoch,
            keys=MappingProxyType(keys),
            gone=MappingProxyType(_cap(gone)),
            states=MappingProxyType(states),
            first_held=MappingProxyType(first_held),
            entries=MappingProxyType({k.kid: k.entry() for k in snapshot.keys}),
            digest=snapshot.digest,
        )
        return True


# (issuer, digest before, id(event)) -> (event, entries after, digest after). Holding the event
# keeps its id from being reused; cleared when full, like the caches below.
_ADVANCED_MAX = 256
_advanced_cache: dict[
    tuple[str, str | None, int], tuple[Event, Mapping[str, DigestEntry], str | None]
] = {}

# Parsed keys by their JWK: every verifier in a process that learns a key shares one parsed
# (immutable, thread-safe) object instead of re-parsing and re-checking the point.
_PARSED_MAX = 256
_parsed: dict[tuple[tuple[str, str], ...], PublicKey] = {}
_by_identity: dict[int, tuple[Mapping[str, Any], PublicKey]] = {}


def _load(jwk: Any, kid: str, alg: Any) -> PublicKey | None:
    """Parse a public JWK from the issuer; a key we refuse never verifies, and is logged."""
    if not isinstance(jwk, Mapping):
        logger.error("key has no JWK, not usable", extra={"kid": kid})
        return None
    same = _by_identity.get(id(jwk))
    if same is not None and same[0] is jwk:
        key = same[1]
    else:
        parsed = _parse(jwk, kid)
        if parsed is None:
            return None
        key = parsed
        # Followers in one process share verified events, so the very same JWK object
        # reaches every verifier; holding it keeps its id from being reused.
        if len(_by_identity) >= _PARSED_MAX:
            _by_identity.clear()
        _by_identity[id(jwk)] = (jwk, key)
    if key.kid != kid or (alg is not None and alg != key.alg):
        logger.error("key kid/alg do not match its announcement, not usable", extra={"kid": kid})
        return None
    return key


def _parse(jwk: Mapping[str, Any], kid: str) -> PublicKey | None:
    try:
        complete = {**jwk, "kid": kid} if "kid" not in jwk else jwk
        # Every member counts (use and key_ops decide acceptance too); cheaper than JSON.
        cache_key = tuple(
            sorted((k, v if isinstance(v, str) else repr(v)) for k, v in complete.items())
        )
        key = _parsed.get(cache_key)
        if key is None:
            key = load_public_jwk(complete)
            if len(_parsed) >= _PARSED_MAX:
                _parsed.clear()
            _parsed[cache_key] = key
    except (InvalidKey, TypeError, ValueError) as e:
        logger.error("key refused: %s", e, extra={"kid": kid})
        return None
    return key


def _cap(gone: dict[str, str], limit: int = max_gone_kids) -> dict[str, str]:
    # Dicts keep insertion order: the oldest departures are forgotten first, and a forgotten
    # kid is then refused as unknown_kid, which is still a refusal.
    excess = len(gone) - limit
    if excess > 0:
        for kid in list(gone)[:excess]:
            del gone[kid]
    return gone


def staleness_s(confirmed_at: float, now: float) -> float:
    """Seconds since the key set was last confirmed current (never negative)."""
    return max(0.0, now - confirmed_at) if math.isfinite(confirmed_at) else math.inf
