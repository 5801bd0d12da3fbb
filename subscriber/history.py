"""The key set's signed history: state digests, the signed snapshot, and freshness records.

Redis carries announcements but is not trusted (``docs/threat-model.md``). What a verifier or
the relay believes about a key set comes only from objects signed by the issuer's Ed25519
announcement key, the way TUF protects metadata served by untrusted mirrors:

- a **state digest** names one key set exactly: issuer, epoch, version and, for every usable
  key, its ``kid``, ``alg``, state and RFC 7638 thumbprint. Every event carries the digest
  before and after it (``prev``, ``digest``), so a verifier holding version N can tell whether
  event N+1 continues *its* history (a fork or a mix of histories fails the check);
- the **snapshot** (``GET /.well-known/keyherald-snapshot.jwt``) is the whole key set as a
  JWT signed by the announcement key, with its digest, issued-at and expiry. Verifiers and the
  relay bootstrap and resync only from it; the plain JWKS is for third parties;
- a **freshness record**, signed and published every ``freshness_interval_s`` on its own
  stream, says "at time ``ts`` the key set was (epoch, version, digest)". A verifier that hears
  none for longer than its bound treats itself as degraded, so withholding events (a freeze)
  cannot keep it "live" on an old key set.

Compact JWS with ``typ`` ``keyherald-snapshot+jwt`` and ``keyherald-freshness``; the wire format
is in ``docs/protocol.md``.
"""

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .constants import FRESHNESS_JWS_TYP, SNAPSHOT_JWS_TYP
from .errors import EventError, InvalidKey
from .events import (
    KEY_ACTIVATED,
    KEY_ADDED,
    KEY_RETIRED,
    Event,
    StreamFields,
    sign_compact,
    verify_compact,
)
from .jwk import thumbprint
from .jws import b64url_encode, compact_json

#: Key states that verify, and the ones a key never comes back from.
USABLE_STATES: Final = frozenset({"pending", "active", "retiring"})
ENDED_STATES: Final = frozenset({"revoked", "retired"})

#: One usable key as the digest sees it: (kid, alg, state, thumbprint).
DigestEntry = tuple[str, str, str, str]


def key_material(jwk: Mapping[str, Any]) -> str:
    """The thumbprint a digest binds a key's material with; ``""`` for a JWK without one."""
    try:
        return thumbprint(jwk)
    except InvalidKey:
        return ""


def state_digest(issuer: str, epoch: str, version: int, entries: Iterable[DigestEntry]) -> str:
    """The digest of a key set: ``sha256:`` + base64url of SHA-256 over its canonical JSON."""
    body = {"iss": issuer, "epoch": epoch, "version": version, "keys": sorted(entries)}
    return "sha256:" + b64url_encode(hashlib.sha256(compact_json(body)).digest())


@dataclass(frozen=True, slots=True)
class SnapshotKey:
    """One usable key of a snapshot, with its planned times."""

    jwk: Mapping[str, Any]
    state: str
    activate_at: float | None = None
    retire_at: float | None = None

    @property
    def kid(self) -> str:
        return str(self.jwk.get("kid", ""))

    def entry(self) -> DigestEntry:
        return entry_of(self.jwk, self.state)


@dataclass(frozen=True, slots=True)
class KeySetSnapshot:
    """The issuer's whole key set at one version, as signed."""

    issuer: str
    epoch: str
    version: int
    digest: str
    iat: float
    exp: float
    keys: tuple[SnapshotKey, ...]
    #: Ended keys the issuer still remembers: kid -> ``revoked`` or ``retired``.
    gone: Mapping[str, str] = field(default_factory=dict)
    freshness_interval_s: float | None = None
    #: The compact JWS this was read from (what the relay hands partners).
    token: str = field(default="", repr=False, compare=False)

    def payload(self) -> dict[str, Any]:
        """The JSON object that is signed."""
        return {
            "iss": self.issuer,
            "epoch": self.epoch,
            "version": self.version,
            "digest": self.digest,
            "iat": self.iat,
            "exp": self.exp,
            "freshness_interval_s": self.freshness_interval_s,
            "keys": [
                {
                    "jwk": dict(k.jwk),
                    "state": k.state,
                    "activate_at": k.activate_at,
                    "retire_at": k.retire_at,
                }
                for k in self.keys
            ],  # fmt: skip
            "gone": dict(self.gone),
        }

    def jwks(self) -> dict[str, Any]:
        """The same key set as a JWKS document with its ``keyherald`` member."""
        return {
            "keys": [dict(k.jwk) for k in self.keys],
            "keyherald": {
                "version": self.version,
                "epoch": self.epoch,
                "digest": self.digest,
                "states": {k.kid: k.state for k in self.keys} | dict(self.gone),
            },
        }


def sign_snapshot(
    snapshot: KeySetSnapshot, signing_key: Ed25519PrivateKey, announce_kid: str
) -> str:
    """The snapshot as a compact JWS under the announcement key."""
    return sign_compact(snapshot.payload(), SNAPSHOT_JWS_TYP, signing_key, announce_kid)


def _number(body: Mapping[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EventError(f"snapshot {name} must be a finite number")
    return float(value)


def _signed_state(body: Mapping[str, Any], what: str, issuer: str) -> tuple[str, int, str]:
    """``(epoch, version, digest)`` of a verified snapshot or freshness payload for
    ``issuer``."""
    if body.get("iss") != issuer:
        raise EventError(f"{what} is for issuer {body.get('iss')!r}", reason="wrong_issuer")
    version, epoch, digest = body.get("version"), body.get("epoch"), body.get("digest")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise EventError(f"{what} version must be a non-negative integer")
    if not isinstance(epoch, str) or not isinstance(digest, str):
        raise EventError(f"{what} epoch and digest must be strings")
    return epoch, version, digest


def _snapshot_keys(raw: Any) -> tuple[SnapshotKey, ...]:
    if not isinstance(raw, list):
        raise EventError("snapshot keys must be a list")
    keys: list[SnapshotKey] = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("jwk"), Mapping):
            raise EventError("snapshot key without a jwk")
        if item.get("state") not in USABLE_STATES or not isinstance(item["jwk"].get("kid"), str):
            raise EventError("snapshot key without a kid or a usable state")
        keys.append(
            SnapshotKey(
                jwk=item["jwk"],
                state=item["state"],
                activate_at=_number(item, "activate_at", optional=True),
                retire_at=_number(item, "retire_at", optional=True),
            )
        )
    return tuple(keys)


def parse_snapshot(
    token: str,
    announce_keys: Mapping[str, Ed25519PublicKey],
    *,
    issuer: str,
    now: float,
    leeway_s: float,
) -> KeySetSnapshot:
    """Verify a signed snapshot and check it is whole, for ``issuer``, and not expired.

    :raises EventError: ``forged_event`` (signature), ``wrong_issuer``, ``expired_snapshot``,
        ``bad_digest`` (the keys do not hash to the signed digest) or ``malformed_event``.
    """
    body = verify_compact(token, SNAPSHOT_JWS_TYP, announce_keys)
    epoch, version, digest = _signed_state(body, "snapshot", issuer)
    iat, exp = _number(body, "iat"), _number(body, "exp")
    assert iat is not None and exp is not None
    if exp + leeway_s < now:
        raise EventError(f"snapshot expired at {exp}", reason="expired_snapshot")
    gone = body.get("gone", {})
    if not isinstance(gone, Mapping) or not all(s in ENDED_STATES for s in gone.values()):
        raise EventError("snapshot gone must map kid to revoked or retired")
    snapshot = KeySetSnapshot(
        issuer=issuer,
        epoch=epoch,
        version=version,
        digest=digest,
        iat=iat,
        exp=exp,
        keys=_snapshot_keys(body.get("keys")),
        gone=dict(gone),
        freshness_interval_s=_number(body, "freshness_interval_s", optional=True),
        token=token,
    )
    if len({k.kid for k in snapshot.keys}) != len(snapshot.keys):
        raise EventError("snapshot lists a kid twice")
    expected = state_digest(issuer, epoch, version, (k.entry() for k in snapshot.keys))
    if expected != digest:
        raise EventError("snapshot keys do not match its digest", reason="bad_digest")
    return snapshot


@dataclass(frozen=True, slots=True)
class Freshness:
    """A signed statement: at ``ts`` the key set was ``(epoch, version, digest)``."""

    issuer: str
    epoch: str
    version: int
    digest: str
    ts: float

    def payload(self) -> dict[str, Any]:
        return {
            "iss": self.issuer,
            "epoch": self.epoch,
            "version": self.version,
            "digest": self.digest,
            "ts": self.ts,
        }


def sign_freshness(
    record: Freshness, signing_key: Ed25519PrivateKey, announce_kid: str
) -> dict[str, str]:
    """The freshness stream entry's fields."""
    return {"jws": sign_compact(record.payload(), FRESHNESS_JWS_TYP, signing_key, announce_kid)}


def parse_freshness(
    fields: StreamFields, announce_keys: Mapping[str, Ed25519PublicKey], *, issuer: str
) -> Freshness:
    """Verify one freshness stream entry.

    :raises EventError: as :func:`parse_snapshot`.
    """
    raw = fields.get(b"jws") if b"jws" in fields else fields.get("jws")  # type: ignore[call-overload]
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        raise EventError("freshness record has no jws field")
    body = verify_compact(raw, FRESHNESS_JWS_TYP, announce_keys)
    epoch, version, digest = _signed_state(body, "freshness", issuer)
    ts = _number(body, "ts")
    assert ts is not None
    return Freshness(issuer=issuer, epoch=epoch, version=version, digest=digest, ts=ts)


def entry_of(jwk: Mapping[str, Any], state: str) -> DigestEntry:
    """The digest entry of a usable key from its public JWK."""
    return (str(jwk.get("kid", "")), str(jwk.get("alg", "")), state, key_material(jwk))


def advance(entries: Mapping[str, DigestEntry], event: Event) -> dict[str, DigestEntry]:
    """The usable keys after ``event``: the one rule the issuer and every verifier share to
    compute the digest an event must carry."""
    after = dict(entries)
    if event.type == KEY_ADDED:
        jwk = event.data.get("jwk")
        if isinstance(jwk, Mapping):
            after[event.kid] = entry_of({**jwk, "kid": event.kid}, "pending")
    elif event.type == KEY_ACTIVATED:
        previous = event.data.get("previous_kid")
        if isinstance(previous, str) and previous in after:
            kid, alg, _, material = after[previous]
            after[previous] = (kid, alg, "retiring", material)
        if event.kid in after:
            kid, alg, _, material = after[event.kid]
            after[event.kid] = (kid, alg, "active", material)
    elif event.type == KEY_RETIRED:
        after.pop(event.kid, None)
    return after
