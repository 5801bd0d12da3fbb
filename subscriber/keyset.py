"""The verifier's key cache: pure state, no I/O.

A :class:`KeySet` is moved forward by signed events (:meth:`KeySet.apply_event`) and reset from
the issuer's JWKS (:meth:`KeySet.replace_from_jwks`). Readers take :attr:`KeySet.view`, an
immutable snapshot replaced in one assignment, so a verification running on another thread
always sees the usable keys, the gone keys and the version of one and the same key set.

A key set also owns its verifier's :class:`~subscriber.token_cache.TokenCache`: every new
view, whatever produced it, drops the cached tokens whose key it no longer holds.
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Final

from .constants import max_gone_kids
from .errors import InvalidKey
from .events import KEY_ACTIVATED, KEY_ADDED, KEY_RETIRED, Event
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
    #: The event is more than one version ahead: events were missed, resync from the JWKS.
    GAP = "gap"
    #: The event belongs to another epoch (the key store was rebuilt): resync from the JWKS.
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
    """

    version: int = 0
    epoch: str | None = None
    keys: Mapping[str, PublicKey] = field(default_factory=_empty)
    gone: Mapping[str, str] = field(default_factory=_empty)
    states: Mapping[str, str] = field(default_factory=_empty)
    first_held: Mapping[str, float] = field(default_factory=_empty)


@dataclass(slots=True)
class KeySet:
    """The key cache of one verifier, advanced by events in version order.

    :param issuer: the issuer every event and JWKS must belong to (checked by the caller that
        parses events; kept here for log lines).
    :param tokens: the verified-token cache that this key set invalidates.
    """

    issuer: str
    tokens: TokenCache = field(default_factory=TokenCache)
    #: Epochs this key set has left; events from them are replays and never trigger a resync.
    old_epochs: set[str] = field(default_factory=set)
    _view: KeyView = field(default_factory=KeyView, init=False, repr=False)

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

    def apply_event(self, event: Event, now: float) -> Outcome:
        """Apply one verified event if it is the next version of our epoch.

        Idempotent: applying an event twice, or an older one, returns :attr:`Outcome.IGNORED`
        and changes nothing.
        """
        view = self.view
        if event.epoch != view.epoch:
            if event.epoch in self.old_epochs:
                return Outcome.OLD_EPOCH
            return Outcome.NEW_EPOCH
        if event.version <= view.version:
            return Outcome.IGNORED
        if event.version != view.version + 1:
            return Outcome.GAP
        keys, gone = dict(view.keys), dict(view.gone)
        states, first_held = dict(view.states), dict(view.first_held)
        if event.type == KEY_ADDED:
            key = _load(event.data.get("jwk"), event.kid, event.data.get("alg"))
            states[event.kid] = "pending"
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
            states[event.kid] = state
            keys.pop(event.kid, None)
            first_held.pop(event.kid, None)
            gone[event.kid] = GONE_REASONS[state]
        self.view = KeyView(
            version=event.version,
            epoch=view.epoch,
            keys=MappingProxyType(keys),
            gone=MappingProxyType(_cap(gone)),
            states=MappingProxyType(states),
            first_held=MappingProxyType(first_held),
        )
        return Outcome.APPLIED

    def replace_from_jwks(self, doc: Mapping[str, Any], now: float) -> bool:
        """Adopt the issuer's JWKS document unless we already know a newer key set.

        A document of our epoch and a version not newer than ours changes nothing (a cache
        may serve an older JWKS than the events we applied); a document of another epoch
        replaces everything.

        :returns: whether the view changed.
        :raises ValueError: the document lacks the ``keyherald`` member or it is malformed.
        """
        version, epoch, doc_states = _keyherald_member(doc)
        view = self.view
        if epoch == view.epoch and version <= view.version:
            return False
        keys: dict[str, PublicKey] = {}
        states: dict[str, str] = {}
        for jwk in doc.get("keys") or ():
            kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
            if not isinstance(kid, str):
                logger.warning("JWKS key without a kid skipped", extra={"version": version})
                continue
            state = doc_states.get(kid, "active")
            if state not in USABLE_STATES:
                continue
            key = _load(jwk, kid, jwk.get("alg"))
            if key is not None:
                keys[kid] = key
            states[kid] = state
        same_epoch = epoch == view.epoch
        gone = dict(view.gone) if same_epoch else {}
        for kid, state in doc_states.items():
            if state in GONE_REASONS:
                states[kid] = state
                gone[kid] = GONE_REASONS[state]
        if same_epoch:
            # A key we held that left the JWKS without telling us why has been retired.
            for kid in view.keys.keys() - keys.keys():
                gone.setdefault(kid, "retired_key")
                states.setdefault(kid, "retired")
        for kid in keys:
            gone.pop(kid, None)
        first_held = {kid: view.first_held.get(kid, now) for kid in keys}
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
        )
        return True


def _keyherald_member(doc: Mapping[str, Any]) -> tuple[int, str, Mapping[str, str]]:
    member = doc.get("keyherald")
    if not isinstance(member, Mapping):
        raise ValueError("JWKS has no keyherald member")
    version, epoch, states = member.get("version"), member.get("epoch"), member.get("states", {})
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"JWKS keyherald.version must be a non-negative integer, not {version!r}")
    if not isinstance(epoch, str):
        raise ValueError(f"JWKS keyherald.epoch must be a string, not {epoch!r}")
    if not isinstance(states, Mapping) or not all(isinstance(s, str) for s in states.values()):
        raise ValueError("JWKS keyherald.states must map kid to state")
    if not isinstance(doc.get("keys", []), list):
        raise ValueError("JWKS keys must be a list")
    return version, epoch, states


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


def _cap(gone: dict[str, str]) -> dict[str, str]:
    # Dicts keep insertion order: the oldest departures are forgotten first, and a forgotten
    # kid is then refused as unknown_kid, which is still a refusal.
    excess = len(gone) - max_gone_kids
    if excess > 0:
        for kid in list(gone)[:excess]:
            del gone[kid]
    return gone


def staleness_s(confirmed_at: float, now: float) -> float:
    """Seconds since the key set was last confirmed current (never negative)."""
    return max(0.0, now - confirmed_at) if math.isfinite(confirmed_at) else math.inf
