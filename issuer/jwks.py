"""The published key set and issuer metadata, rendered once per key-set version.

Requests are served from precomputed bytes; a document is rebuilt only when ``(epoch,
version)`` changes. Private members are stripped here, whatever a record might hold.
"""

import json
from dataclasses import dataclass
from typing import Any

from subscriber.constants import JWKS_PATH
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
