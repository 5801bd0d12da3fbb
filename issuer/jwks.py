"""The published key set and issuer metadata, rendered once per key-set version.

Requests are served from precomputed bytes; a document is rebuilt only when ``(epoch,
version)`` changes. Private members are stripped here, whatever a record might hold.
"""

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subscriber.constants import JWKS_PATH, SNAPSHOT_PATH
from subscriber.history import KeySetSnapshot, SnapshotKey, sign_snapshot
from subscriber.jwk import PRIVATE_MEMBERS
from subscriber.jws import compact_json

from .records import PUBLISHED_STATES, chronological
from .store import Snapshot


@dataclass(frozen=True, slots=True)
class JwksDocument:
    """A rendered JWKS: response ``body`` and its strong ``etag`` (``"<epoch>.<version>"``)."""

    epoch: str
    version: int
    body: bytes
    etag: str

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def public_only(jwk: dict[str, Any]) -> dict[str, Any]:
    """``jwk`` without any private member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``...)."""
    return {k: v for k, v in jwk.items() if k not in PRIVATE_MEMBERS}


def render_jwks(snapshot: Snapshot) -> JwksDocument:
    """Pending, active and retiring public keys, plus the ``keyherald`` member of the protocol."""
    epoch = snapshot.epoch or ""
    published = chronological(k for k in snapshot.keys.values() if k.state in PUBLISHED_STATES)
    document = {
        "keys": [public_only(dict(k.jwk)) for k in published],
        "keyherald": {
            "version": snapshot.version,
            "epoch": epoch,
            "states": {k.kid: k.state for k in published},
            "digest": snapshot.meta.get("digest"),
        },
    }
    return JwksDocument(
        epoch=epoch,
        version=snapshot.version,
        body=compact_json(document),
        etag=f'"{epoch}.{snapshot.version}"',
    )


def jwks_uri(issuer: str) -> str:
    """Where the JWKS of ``issuer`` is served."""
    return issuer.rstrip("/") + JWKS_PATH


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an ``If-None-Match`` header against ``etag``."""
    if not if_none_match:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


@dataclass(frozen=True, slots=True)
class SignedSnapshot:
    """The signed key-set snapshot as served: the compact JWS and what it was made from."""

    epoch: str
    version: int
    iat: float
    token: str
    etag: str


def render_snapshot(
    snapshot: Snapshot,
    *,
    issuer: str,
    now: float,
    ttl_s: float,
    freshness_interval_s: float,
    signing_key: Ed25519PrivateKey,
    announce_kid: str,
) -> SignedSnapshot:
    """The key set of an authenticated ``snapshot`` as a JWT under the announcement key."""
    epoch = snapshot.epoch or ""
    records = chronological(snapshot.keys.values())
    body = KeySetSnapshot(
        issuer=issuer,
        epoch=epoch,
        version=snapshot.version,
        digest=snapshot.meta["digest"],
        iat=now,
        exp=now + ttl_s,
        keys=tuple(
            SnapshotKey(
                jwk={**public_only(dict(k.jwk)), "kid": k.kid},
                state=k.state,
                activate_at=k.activate_at,
                retire_at=k.retire_at,
            )
            for k in records
            if k.state in PUBLISHED_STATES
        ),
        gone={k.kid: k.state for k in records if k.state not in PUBLISHED_STATES},
        freshness_interval_s=freshness_interval_s,
    )
    token = sign_snapshot(body, signing_key, announce_kid)
    return SignedSnapshot(
        epoch=epoch,
        version=snapshot.version,
        iat=now,
        token=token,
        etag=f'"{epoch}.{snapshot.version}.{int(now * 1000)}"',
    )


def snapshot_uri(issuer: str) -> str:
    """Where the signed key-set snapshot of ``issuer`` is served."""
    return issuer.rstrip("/") + SNAPSHOT_PATH
