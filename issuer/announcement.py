"""The announcement key of one key set: the Ed25519 key that signs its events, snapshots and
freshness records (``docs/protocol.md``).

It lives in the store's meta hash sealed under the KEK (``announce_kid``,
``announce_sealed``) and is unsealed once per epoch; its public half is always derived from the
unsealed private key, never read from Redis.
"""

import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subscriber.clock import Clock
from subscriber.events import announcement_jwk

from .errors import KekError
from .kek import Kek

ANNOUNCE_PURPOSE: Final = "announcement-key"


class AnnouncementKey:
    """Seals a new announcement key into a store's meta, and unseals the one a meta names.

    :param kek: seals and opens the private key.
    :param issuer: the key set's ``iss``, written into a new store's meta.
    :param clock: stamps a new store's ``created_at``.
    """

    def __init__(self, kek: Kek, issuer: str, clock: Clock) -> None:
        self.kek = kek
        self.issuer = issuer
        self.clock = clock
        self._held: tuple[str, str, Ed25519PrivateKey] | None = None  # epoch, kid, key

    def new_store_meta(self) -> dict[str, str]:
        """The meta of a new store: a new epoch, and the announcement key sealed.

        A store lost under a running process keeps its announcement key: verifiers that pinned
        it go on trusting events, and only resync for the new epoch.
        """
        key = self._held[2] if self._held else Ed25519PrivateKey.generate()
        jwk = announcement_jwk(key.public_key())
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        sealed = self.kek.seal(raw, kid=jwk["kid"], purpose=ANNOUNCE_PURPOSE)
        return {
            "epoch": uuid.uuid4().hex,
            "issuer": self.issuer,
            "created_at": repr(self.clock()),
            "announce_kid": jwk["kid"],
            "announce_sealed": json.dumps(sealed, separators=(",", ":"), sort_keys=True),
        }

    def signer(self, meta: Mapping[str, str], epoch: str) -> tuple[str, Ed25519PrivateKey]:
        """``(kid, private key)`` of the announcement key ``meta`` names (authenticated meta
        only: this unseals what it is given)."""
        held = self._held
        if held is not None and held[0] == epoch and held[1] == meta.get("announce_kid"):
            return held[1], held[2]
        kid = meta["announce_kid"]
        raw = self.kek.open(json.loads(meta["announce_sealed"]), kid=kid, purpose=ANNOUNCE_PURPOSE)
        key = Ed25519PrivateKey.from_private_bytes(raw)
        self._held = (epoch, kid, key)
        return kid, key

    def jwk(self, meta: Mapping[str, str], epoch: str) -> dict[str, Any]:
        """The public JWK, derived from the unsealed private key."""
        _, key = self.signer(meta, epoch)
        return announcement_jwk(key.public_key())

    def check_kek(self, meta: Mapping[str, str]) -> None:
        """Raise :class:`KekError` when ``meta`` was sealed under another KEK.

        A store sealed under another KEK fails authentication too; that is a configuration
        mistake to name, not tampering to repair.
        """
        try:
            kek_id = json.loads(meta.get("announce_sealed", "{}")).get("kek_id")
        except (ValueError, AttributeError):
            return
        if isinstance(kek_id, str) and kek_id != self.kek.kek_id:
            raise KekError(
                f"the key store is sealed under KEK id {kek_id!r}, "
                f"the configured KEK has id {self.kek.kek_id!r}"
            )
