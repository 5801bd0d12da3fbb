"""Exceptions raised by the subscriber library.

Every failure a caller can act on has a machine-readable ``reason`` so metrics and logs can
count them::

    KeyheraldError
    ├── InvalidToken                 a token was refused (``reason`` says why)
    │   ├── MalformedToken           malformed, token_too_large, forbidden_header,
    │   │                            unsupported_crit, unsupported_serialization, wrong_typ
    │   ├── KeyNotFound              missing_kid, unknown_kid
    │   ├── KeyNotUsable             revoked_key, retired_key, keys_stale
    │   ├── BadSignature             bad_signature, alg_mismatch, alg_not_allowed
    │   └── InvalidClaims            expired, not_yet_valid, issued_in_future, wrong_issuer,
    │                                wrong_audience, missing_claim, invalid_claim
    ├── InvalidKey                   a JWK refused at load (weak_key, unsupported_key, bad_jwk,
    │                                missing_alg, private_key_material, duplicate_kid)
    ├── EventError                   a stream event refused (malformed_event, forged_event,
    │                                wrong_issuer, unsupported_schema)
    └── FetchError                   metadata/JWKS could not be fetched or parsed
"""

#: Every ``reason`` an :class:`InvalidToken` can carry: a closed set, so a metrics label built
#: from it stays bounded whatever tokens arrive.
TOKEN_REASONS = frozenset(
    {
        # MalformedToken
        "malformed",
        "token_too_large",
        "forbidden_header",
        "unsupported_crit",
        "unsupported_serialization",
        "wrong_typ",
        # KeyNotFound
        "missing_kid",
        "unknown_kid",
        # KeyNotUsable
        "revoked_key",
        "retired_key",
        "keys_stale",
        # BadSignature
        "bad_signature",
        "alg_mismatch",
        "alg_not_allowed",
        # InvalidClaims
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "wrong_issuer",
        "wrong_audience",
        "missing_claim",
        "invalid_claim",
    }
)


class KeyheraldError(Exception):
    """Root of every error the subscriber library raises."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidToken(KeyheraldError):
    """A token was refused. ``reason`` is a stable, machine-readable code."""

    reason = "invalid_token"


class MalformedToken(InvalidToken):
    """The token is not a well-formed compact JWS we accept."""

    reason = "malformed"


class KeyNotFound(InvalidToken):
    """The token names no key, or a key this verifier does not hold."""

    reason = "unknown_kid"
    #: The kid the token names (``unknown_kid`` only).
    kid: str | None = None


class KeyNotUsable(InvalidToken):
    """The key is known but must not verify (revoked, retired, or the key set is stale)."""

    reason = "revoked_key"


class BadSignature(InvalidToken):
    """The signature does not verify, or the algorithm is not the key's algorithm."""

    reason = "bad_signature"


class InvalidClaims(InvalidToken):
    """The signature is good but a registered claim fails its check."""

    reason = "invalid_claim"


class InvalidKey(KeyheraldError):
    """A JWK was refused at load: weak, unsupported, or malformed."""

    reason = "bad_jwk"


class EventError(KeyheraldError):
    """A stream event was refused and not applied."""

    reason = "malformed_event"


class FetchError(KeyheraldError):
    """The issuer's metadata or JWKS could not be fetched or parsed."""

    reason = "fetch_failed"
