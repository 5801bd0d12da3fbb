"""Verified-token cache: a token seen again skips its signature check. Pure state, no I/O.

A client sends the same access token on every request for the token's lifetime; re-checking
its signature each time is the whole cost of :meth:`Verifier.verify`. This cache maps the
**whole token string** (an exact match, never a hash of it) to what its first verification
established: the key object that verified it, its ``exp`` and earliest valid time, and its
claims. A hit is trusted only if, at that moment,

- the key that verified the token is still, by identity, the key the current key set holds
  under that ``kid``: a revoked, retired, replaced or resynced-away key fails this check on
  the very next call, whatever code path removed it (see below);
- its claims still hold at the verifier's clock, with its leeway: :func:`check_claims`, the
  same check a first verification ends with (``exp``, ``nbf``, ``iat``, ``iss``, ``aud``).

A key that no longer matches is a miss, and the caller runs the full verification, which then
raises the precise reason (``revoked_key``, ``retired_key``...); claims that no longer hold
raise at once (``expired``), as the full verification would after the signature check.

The cache belongs to a :class:`~subscriber.keyset.KeySet`: every new key-set view passes
through :meth:`TokenCache.retain`, which drops the entries whose key left, so memory is given
back the moment a key goes. The identity check on every hit is what makes that eviction
impossible to forget: even an entry written by a verification that raced a revocation on
another thread is refused.

Bounded: at most ``max_entries`` entries, and tokens longer than ``max_token_chars`` are never
stored. Only tokens that fully verified are stored, so a flood of forged or random tokens
costs one dictionary lookup each and evicts nothing. A full cache is cleared, not trimmed
(as the header cache in :mod:`subscriber.verify`): an ordered eviction cost the miss path
about 2 % of an RS256 verification in ``bench/verify.py``, and a clear costs each hot token
one full verification per ``max_entries`` new tokens. Thread-safe under the GIL, with no
lock: every mutation is a single call on a built-in ``dict``.
"""

from collections.abc import Mapping
from typing import Any

from .jwk import PublicKey
from .jws import strict_json_object
from .verify import VerifyOptions, check_claims

__all__ = ["TokenCache"]

# The key that verified, its kid, the checked claims (a private copy), the payload bytes.
_Entry = tuple[PublicKey, str, dict[str, Any], bytes]


class TokenCache:
    """Verified tokens by their exact string, bounded, invalidated by the key set.

    :param max_entries: how many tokens are kept; 0 turns the cache off.
    :param max_token_chars: longer tokens are verified every time, never stored.
    :raises ValueError: a bound that is not a non-negative integer.
    """

    __slots__ = ("_entries", "max_entries", "max_token_chars")

    def __init__(self, max_entries: int = 1024, max_token_chars: int = 4096) -> None:
        for name, value in (("max_entries", max_entries), ("max_token_chars", max_token_chars)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, the input is {value!r}")
        self.max_entries = max_entries
        self.max_token_chars = max_token_chars
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, token: object) -> bool:
        return token in self._entries

    def get(
        self, token: str, keys: Mapping[str, PublicKey], options: VerifyOptions, now: float
    ) -> dict[str, Any] | None:
        """The claims of ``token`` if it verified before and its key still verifies.

        :param keys: the current key set's usable keys (``KeyView.keys``).
        :param options: the options the token was verified with; its claims are checked
            again against them at ``now`` (``exp``, ``nbf``, ``iat`` with the leeway).
        :returns: a fresh dictionary the caller may modify, or ``None`` on a miss.
        :raises InvalidClaims: the token's claims no longer hold (``expired``...).
        """
        entry = self._entries.get(token)
        if entry is None:
            return None
        key, kid, claims, payload = entry
        if keys.get(kid) is not key:
            # The full verification decides, and says why (revoked_key, retired_key...).
            self._entries.pop(token, None)
            return None
        try:
            check_claims(claims, options, now)
        except Exception:
            self._entries.pop(token, None)
            raise
        # Copies, so a caller changing its claims cannot change the next caller's: a shallow
        # one when no value is a list or an object (no '[' and a single '{' in the JSON; a
        # '[' inside a string only costs the slower path), else a fresh parse.
        if b"[" not in payload and payload.find(b"{", 1) < 0:
            return dict(claims)
        return strict_json_object(payload)

    def put(
        self, token: str, key: PublicKey, kid: str, claims: dict[str, Any], payload: bytes
    ) -> None:
        """Remember a token that has just passed every check, with the key that verified it.

        :param claims: the checked claims; a copy is kept.
        :param payload: the signed payload bytes the claims were parsed from.
        """
        if len(token) > self.max_token_chars or not self.max_entries:
            return
        entries = self._entries
        if len(entries) >= self.max_entries:
            entries.clear()
        entries[token] = (key, kid, dict(claims), payload)

    def retain(self, keys: Mapping[str, PublicKey]) -> None:
        """Drop every entry whose key is no longer, by identity, the one ``keys`` holds."""
        entries = self._entries
        if not entries:
            return
        # list() copies in one C call, so a put on another thread cannot break the loop.
        for token, (key, kid, _, _) in list(entries.items()):
            if keys.get(kid) is not key:
                entries.pop(token, None)

    def clear(self) -> None:
        """Forget every token."""
        self._entries.clear()
