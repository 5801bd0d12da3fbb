"""Envelope encryption of private keys at rest: AES-256-GCM under a key-encryption key (KEK).

A sealed key is a small JSON-able mapping. The associated data binds the ciphertext to its
``kid`` and purpose, so a ciphertext copied onto another record does not open. ``kek_id`` (a
hash of the KEK, not the KEK) lets a wrong KEK be named in an error without revealing it.
"""

import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError, KekError

logger = logging.getLogger(__name__)

KEK_BYTES = 32
NONCE_BYTES = 12
SEALED_ALG = "A256GCM"


class Kek:
    """A 256-bit key-encryption key. Its ``repr`` never shows the key."""

    __slots__ = ("_aead", "_key", "kek_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_BYTES:
            raise ConfigError(f"the KEK must be {KEK_BYTES} bytes, the input has {len(key)}")
        self._aead = AESGCM(key)
        self._key = key
        self.kek_id = hashlib.sha256(b"keyherald-kek-id:" + key).hexdigest()[:16]

    @classmethod
    def from_base64(cls, value: str, name: str = "KEYHERALD_KEK") -> "Kek":
        """Parse a KEK setting ``name`` (standard or url-safe base64 of 32 random bytes).

        :raises ConfigError: not base64, not 32 bytes, or plainly not random (one repeated
            byte, or text such as a passphrase); the message says how to make a good one.
        """
        text = value.strip()
        make = "generate one with `openssl rand -base64 32`"
        if len(text) == 2 * KEK_BYTES and all(c in "0123456789abcdefABCDEF" for c in text):
            raise ConfigError(f"{name} looks like hex; it must be base64 of 32 bytes: {make}")
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ConfigError(f"{name} is not valid base64: {make}") from e
        if len(raw) != KEK_BYTES:
            raise ConfigError(f"{name} decodes to {len(raw)} bytes, it must be {KEK_BYTES}: {make}")
        problem = weakness(raw)
        if problem is not None:
            raise ConfigError(f"{name} {problem}, not random bytes: {make}")
        return cls(raw)

    @classmethod
    def ephemeral(cls) -> "Kek":
        """A random KEK that lives only in this process: for development, never production."""
        logger.warning(
            "DEVELOPMENT MODE: using an ephemeral, random KEK; private keys in Redis will be "
            "unreadable after this process exits. Set KEYHERALD_KEK for real use."
        )
        return cls(os.urandom(KEK_BYTES))

    def __repr__(self) -> str:
        return f"Kek(kek_id={self.kek_id!r})"

    def derive(self, purpose: str, context: str) -> bytes:
        """A 32-byte key for ``purpose`` bound to ``context`` (HKDF-SHA256), so one KEK can
        authenticate state too without the two uses ever sharing a key."""
        info = f"keyherald:{purpose}:{context}".encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._key)

    def seal(self, plaintext: bytes, *, kid: str, purpose: str) -> dict[str, str]:
        """Encrypt ``plaintext`` bound to ``kid`` and ``purpose``."""
        nonce = os.urandom(NONCE_BYTES)
        ct = self._aead.encrypt(nonce, plaintext, _aad(kid, purpose))
        return {
            "alg": SEALED_ALG,
            "kek_id": self.kek_id,
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }

    def open(self, sealed: Mapping[str, str], *, kid: str, purpose: str) -> bytes:
        """Decrypt a mapping made by :meth:`seal` for the same ``kid`` and ``purpose``.

        :raises KekError: another KEK, another kid/purpose, or a tampered ciphertext.
        """
        if sealed.get("kek_id") != self.kek_id:
            raise KekError(
                f"key {kid!r} is sealed under KEK id {sealed.get('kek_id')!r}, "
                f"the configured KEK has id {self.kek_id!r}"
            )
        try:
            nonce = base64.b64decode(sealed["nonce"])
            ct = base64.b64decode(sealed["ct"])
            return self._aead.decrypt(nonce, ct, _aad(kid, purpose))
        except (KeyError, binascii.Error, InvalidTag) as e:
            raise KekError(f"sealed key {kid!r} does not open: tampered or misplaced") from e


def weakness(raw: bytes) -> str | None:
    """Why ``raw`` is plainly not a random key, or ``None``.

    Catches the mistakes people make (all zeros, a passphrase or a readable string encoded
    as base64), not every weak key: 32 random bytes are printable ASCII with probability
    (95/256)^32, about 1e-14, and repeat fewer than 8 distinct values practically never.
    """
    if len(set(raw)) < 8:
        return f"repeats {len(set(raw))} distinct byte value(s)"
    if all(32 <= b < 127 or b in b"\t\n\r" for b in raw):
        return "is ASCII text (a passphrase or a readable string)"
    return None


def _aad(kid: str, purpose: str) -> bytes:
    return f"keyherald:{purpose}:{kid}".encode()
