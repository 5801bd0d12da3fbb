"""The wire format of key-lifecycle announcements: defined here, once, and imported by the issuer.

One Redis Stream entry per event, with three fields::

    type     "key-added" | "key-activated" | "key-retired"   (routing hint, not trusted)
    version  decimal key-set version                         (routing hint, not trusted)
    jws      compact JWS, EdDSA, signed by the issuer's announcement key

Only the JWS payload is trusted. It is a JSON object::

    schema    1
    type      as above
    event_id  unique id (hex), stable across relays and retries
    issuer    the issuer URL (``iss``); must equal the subscriber's configured issuer
    epoch     id of the key store; changes only if the store was lost and rebuilt
    version   key-set version after this event (increases by exactly 1 per event)
    ts        seconds since the epoch when the issuer committed the change
    prev      digest of the key set before this event (``subscriber.history.state_digest``)
    digest    digest of the key set after it: a verifier holding ``prev`` at ``version - 1``
              knows the event continues *its* history
    kid       the key the event is about
    data      per type:
              key-added      {"jwk": public JWK, "alg": str, "activate_at": float,
                              "retire_at": float | null}
              key-activated  {"previous_kid": str | null, "previous_retire_at": float | null}
              key-retired    {"reason": "expired" | "revoked"}
              key-set-restored  {"reason": str}: the issuer wrote back the key set it holds
                             after its store lost acknowledged writes (no key changes)

See ``docs/protocol.md`` for ordering, versioning and the threat model.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .constants import EVENT_JWS_TYP, EVENT_SCHEMA, max_announcement_bytes
from .errors import EventError, InvalidKey, MalformedToken
from .jwk import load_public_jwk, thumbprint
from .jws import b64url_decode, b64url_encode, compact_json, strict_json_object

EventType = Literal["key-added", "key-activated", "key-retired", "key-set-restored"]
KEY_ADDED: Final = "key-added"
KEY_ACTIVATED: Final = "key-activated"
KEY_RETIRED: Final = "key-retired"
KEY_SET_RESTORED: Final = "key-set-restored"
EVENT_TYPES: Final = (KEY_ADDED, KEY_ACTIVATED, KEY_RETIRED, KEY_SET_RESTORED)
RETIRE_REASONS: Final = ("expired", "revoked")

#: What redis-py returns for one stream entry's fields (bytes unless decode_responses=True).
StreamFields = Mapping[bytes, bytes] | Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Event:
    """One key-lifecycle announcement, as signed by the issuer."""

    type: str
    issuer: str
    epoch: str
    version: int
    kid: str
    ts: float
    data: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    schema: int = EVENT_SCHEMA
    #: State digests before and after the event (None only for events built by hand in tests:
    #: the wire format requires both).
    prev: str | None = None
    digest: str | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON object that is signed."""
        return {
            "schema": self.schema,
            "type": self.type,
            "event_id": self.event_id,
            "issuer": self.issuer,
            "epoch": self.epoch,
            "version": self.version,
            "ts": self.ts,
            "kid": self.kid,
            "data": dict(self.data),
            "prev": self.prev,
            "digest": self.digest,
        }


def announcement_jwk(public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The public JWK of an announcement key, ``kid`` = RFC 7638 thumbprint."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk: dict[str, Any] = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    jwk.update(kid=thumbprint(jwk), alg="EdDSA", use="sig")
    return jwk


def load_announcement_keys(jwks: list[Mapping[str, Any]]) -> dict[str, Ed25519PublicKey]:
    """kid -> key for the announcement JWKs a subscriber trusts (pinned or from metadata).

    :raises InvalidKey: a JWK that is not an Ed25519 public key.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks:
        parsed = load_public_jwk(jwk)
        if not isinstance(parsed.key, Ed25519PublicKey):
            raise InvalidKey("announcement keys must be Ed25519", reason="unsupported_key")
        keys[parsed.kid] = parsed.key
    return keys


def sign_compact(
    payload: Mapping[str, Any], typ: str, signing_key: Ed25519PrivateKey, announce_kid: str
) -> str:
    """A compact JWS (EdDSA) of ``payload`` under the announcement key, with header ``typ``."""
    header = {"alg": "EdDSA", "kid": announce_kid, "typ": typ}
    signing_input = f"{b64url_encode(compact_json(header))}.{b64url_encode(compact_json(payload))}"
    signature = signing_key.sign(signing_input.encode())
    return f"{signing_input}.{b64url_encode(signature)}"


def sign_event(event: Event, signing_key: Ed25519PrivateKey, announce_kid: str) -> dict[str, str]:
    """Sign ``event`` and return the stream entry's fields."""
    return {
        "type": event.type,
        "version": str(event.version),
        "jws": sign_compact(event.payload(), EVENT_JWS_TYP, signing_key, announce_kid),
    }


def _text(fields: StreamFields, name: str) -> str:
    value = fields.get(name) if name in fields else fields.get(name.encode())  # type: ignore[call-overload]
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError as e:
            raise EventError(f"event field {name!r} is not ASCII") from e
    if not isinstance(value, str):
        raise EventError(f"event has no {name!r} field")
    return value


def _check_data(type_: str, data: Any) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise EventError("event data is not an object")
    if type_ == KEY_ADDED:
        if not isinstance(data.get("jwk"), dict) or not isinstance(data.get("alg"), str):
            raise EventError("key-added needs data.jwk and data.alg")
        if not isinstance(data.get("activate_at"), int | float):
            raise EventError("key-added needs a numeric data.activate_at")
    elif type_ == KEY_ACTIVATED:
        if not isinstance(data.get("previous_kid"), str | None):
            raise EventError("key-activated data.previous_kid must be a string or null")
    elif type_ == KEY_SET_RESTORED:
        if not isinstance(data.get("reason"), str):
            raise EventError("key-set-restored needs a data.reason")
    elif data.get("reason") not in RETIRE_REASONS:
        raise EventError(f"key-retired data.reason must be one of {RETIRE_REASONS}")
    return data


def verify_compact(
    token: str, typ: str, announce_keys: Mapping[str, Ed25519PublicKey]
) -> dict[str, Any]:
    """The payload of a compact JWS of header ``typ`` signed by one of ``announce_keys``.

    Nothing of the payload is read before the signature checks.

    :raises EventError: ``malformed_event`` or ``forged_event``.
    """
    if len(token) > max_announcement_bytes:
        raise EventError(f"{typ} is larger than {max_announcement_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise EventError(f"{typ} is not a compact JWS")
    try:
        header = strict_json_object(b64url_decode(parts[0]))
        payload_bytes = b64url_decode(parts[1])
        signature = b64url_decode(parts[2])
    except MalformedToken as e:
        raise EventError(f"{typ} JWS is malformed") from e
    if header.get("alg") != "EdDSA" or header.get("typ") != typ:
        raise EventError(f"JWS header is not a {typ}", reason="forged_event")
    kid = header.get("kid")
    key = announce_keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise EventError(f"{typ} signed by an unknown announcement key", reason="forged_event")
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode())
    except InvalidSignature as e:
        raise EventError(f"{typ} signature does not verify", reason="forged_event") from e
    try:
        return strict_json_object(payload_bytes)
    except MalformedToken as e:
        raise EventError(f"{typ} payload is not a JSON object") from e


def _check_body(body: Mapping[str, Any], issuer: str) -> None:
    if body.get("schema") != EVENT_SCHEMA:
        raise EventError(
            f"unsupported event schema {body.get('schema')!r}", reason="unsupported_schema"
        )
    if body.get("issuer") != issuer:
        raise EventError(f"event is for issuer {body.get('issuer')!r}", reason="wrong_issuer")
    if body.get("type") not in EVENT_TYPES:
        raise EventError(f"unknown event type {body.get('type')!r}")
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EventError("event version must be a positive integer")
    for name in ("kid", "epoch", "event_id", "prev", "digest"):
        if not isinstance(body.get(name), str):
            raise EventError(f"event {name} must be a string")
    if not isinstance(body.get("ts"), int | float):
        raise EventError("event ts must be a number")


def parse_event(
    fields: StreamFields, announce_keys: Mapping[str, Ed25519PublicKey], *, issuer: str
) -> Event:
    """Verify and decode one stream entry. Nothing is trusted before the signature checks.

    :raises EventError: ``reason`` is ``malformed_event``, ``forged_event`` (bad or unknown
        signature), ``wrong_issuer`` or ``unsupported_schema``.
    """
    body = verify_compact(_text(fields, "jws"), EVENT_JWS_TYP, announce_keys)
    _check_body(body, issuer)
    return Event(
        type=body["type"],
        issuer=issuer,
        epoch=body["epoch"],
        version=body["version"],
        kid=body["kid"],
        ts=float(body["ts"]),
        data=_check_data(body["type"], body.get("data")),
        event_id=body["event_id"],
        prev=body["prev"],
        digest=body["digest"],
    )
