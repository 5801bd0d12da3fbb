"""Token verification, the hot path of the subscriber library, hardened per RFC 8725.

CPU only: no I/O, no locks, no await. Two stages, usable apart (the Wycheproof JWS vectors,
which carry no claims, run through the first alone):

- :func:`verify_signature`: a compact JWS to its checked header and signed payload bytes;
- :func:`check_claims`: ``iss``, ``aud``, ``exp``, ``nbf``, ``iat`` against the options;
- :func:`verify_token`: both, plus the strict parse of the payload in between.

The checks run cheapest first, so a token that fails a string or dictionary check never costs
a signature verification, and nothing in the payload is parsed before its signature verifies:

1. size cap (before any decoding), ASCII, exactly three segments (five is JWE);
2. header: canonical base64url, JSON object without duplicate names, no ``jwk``/``jku``/
   ``x5u``/``x5c``/``zip``, no ``crit``, no ``b64`` other than true, string ``alg``, a
   non-empty string ``kid`` no longer than ``max_kid_chars``, ``typ`` when one is required;
3. ``alg`` in the allowed set, ``kid`` not gone (revoked/retired), ``kid`` held, and ``alg``
   equal to the held key's algorithm (the algorithm comes from the key, never the token);
4. payload and signature canonical base64url, then the signature;
5. payload: JSON object without duplicate names, then the claims.

Headers repeat across tokens (one per signing key), so a header that passed step 2 is cached
by its encoded segment (in the standard alphabet, as the hot path holds it: the mapping is
one-to-one on valid base64url, and a segment with any other character never parses, so it
is never cached) in a small bounded dictionary; everything that depends on the key set
or the options (steps 3 onwards, and ``typ``) is still checked on every token.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from math import isfinite
from types import MappingProxyType
from typing import Any

from . import constants
from .errors import BadSignature, InvalidClaims, KeyNotFound, KeyNotUsable, MalformedToken
from .jwk import SUPPORTED_ALGS, PublicKey
from .jws import URLSAFE_TO_STD, b64_std_decode, b64_std_decode_pair, strict_json_object

__all__ = [
    "EMPTY",
    "VerifyOptions",
    "check_claims",
    "verify_signature",
    "verify_token",
]

#: An empty ``gone`` mapping, the default of :func:`verify_token`.
EMPTY: Mapping[str, str] = MappingProxyType({})

_MAX_LEEWAY_S = 300.0
_MAX_TOKEN_BYTES_LIMIT = 1 << 20
# Header parameters that let a token choose its own key (RFC 8725 3.5 and 3.10), or that
# belong to JWE (``zip``) and would have us inflate attacker-chosen data.
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "zip"})
_GONE_REASONS = frozenset({"revoked_key", "retired_key"})
# Legitimate traffic has a handful of distinct headers (one per key and typ); the bound keeps
# a flood of distinct, well-formed headers from growing memory past ~256 x 512 bytes.
_HEADER_CACHE_MAX = 256
_HEADER_CACHE_MAX_SEGMENT = 512


def _normalize_typ(typ: str) -> str:
    # RFC 7515 4.1.9: media types compare case-insensitively and "application/" may be left
    # out when no other "/" appears, so "at+jwt" and "application/AT+JWT" are one type.
    lowered = typ.lower()
    if lowered.startswith("application/") and "/" not in lowered[12:]:
        return lowered[12:]
    return lowered


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """What a token must satisfy beyond its signature. Checked once, at construction.

    :param issuer: the exact ``iss`` required.
    :param audience: the accepted audience, or a set of them; a token's ``aud`` (a string or
        a list of strings) must contain at least one.
    :param algorithms: the algorithms accepted, a non-empty subset of ``SUPPORTED_ALGS``.
    :param leeway_s: clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (0 to 300 s).
    :param typ: when set, the ``typ`` header every token must carry (compared as a media
        type, e.g. ``"at+jwt"`` matches ``"application/at+jwt"``; RFC 8725 3.11).
    :param max_token_bytes: tokens longer than this are refused before any decoding.
    :raises ValueError: a value that cannot be right, named in the message.
    """

    issuer: str
    audience: str | frozenset[str]
    algorithms: frozenset[str] = frozenset(SUPPORTED_ALGS)
    leeway_s: float = constants.leeway_s
    typ: str | None = None
    max_token_bytes: int = constants.max_token_bytes
    # Derived once so the hot path does no normalising.
    _audiences: frozenset[str] = field(init=False, repr=False, compare=False)
    _typ: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError(f"issuer must be a non-empty string, the input is {self.issuer!r}")
        audiences = _audience_set(self.audience)
        if not isinstance(self.audience, str):
            object.__setattr__(self, "audience", audiences)
        object.__setattr__(self, "_audiences", audiences)
        object.__setattr__(self, "algorithms", _algorithm_set(self.algorithms))
        leeway = self.leeway_s
        if (
            isinstance(leeway, bool)
            or not isinstance(leeway, int | float)
            or not 0 <= leeway <= _MAX_LEEWAY_S
        ):
            raise ValueError(
                f"leeway_s must be a number of seconds from 0 to {_MAX_LEEWAY_S:g}, "
                f"the input is {leeway!r}"
            )
        if self.typ is not None and (not isinstance(self.typ, str) or not self.typ):
            raise ValueError(f"typ must be None or a non-empty string, the input is {self.typ!r}")
        object.__setattr__(self, "_typ", None if self.typ is None else _normalize_typ(self.typ))
        size = self.max_token_bytes
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or not 0 < size <= _MAX_TOKEN_BYTES_LIMIT
        ):
            raise ValueError(
                f"max_token_bytes must be an integer from 1 to {_MAX_TOKEN_BYTES_LIMIT}, "
                f"the input is {size!r}"
            )


def _audience_set(audience: object) -> frozenset[str]:
    if isinstance(audience, str):
        values: frozenset[Any] = frozenset((audience,))
    elif isinstance(audience, frozenset | set | list | tuple):
        values = frozenset(audience)
    else:
        values = frozenset()
    if not values or not all(isinstance(a, str) and a for a in values):
        raise ValueError(
            "audience must be a non-empty string or a non-empty set of them, "
            f"the input is {audience!r}"
        )
    return values


def _algorithm_set(algorithms: object) -> frozenset[str]:
    if isinstance(algorithms, str) or not isinstance(algorithms, frozenset | set | list | tuple):
        raise ValueError(f"algorithms must be a set of names, the input is {algorithms!r}")
    values = frozenset(algorithms)
    unsupported = values - frozenset(SUPPORTED_ALGS)
    if not values or unsupported:
        raise ValueError(
            f"algorithms must be a non-empty subset of {SUPPORTED_ALGS}, "
            f"the input is {sorted(map(str, values))!r}"
        )
    return values


# kid, alg, normalised typ (or None), and the whole header, read-only.
_Header = tuple[str, str, str | None, Mapping[str, Any]]
_header_cache: dict[bytes, _Header] = {}
_cached_header = _header_cache.get  # stays valid: the cache is cleared, never replaced


def _parse_header(segment: bytes) -> _Header:
    if segment.lstrip()[:1] == b"{":
        # A JSON-serialized JWS that happens to contain two dots lands here.
        raise MalformedToken(
            "JWS JSON serialization is not accepted", reason="unsupported_serialization"
        )
    header = strict_json_object(b64_std_decode(segment))
    forbidden = _FORBIDDEN_HEADERS & header.keys()
    if forbidden:
        raise MalformedToken(
            f"header parameter {sorted(forbidden)[0]!r} is not accepted", reason="forbidden_header"
        )
    if "crit" in header:
        # We implement no extension, so any critical one must make the token invalid.
        raise MalformedToken(
            "header has 'crit'; no extension is understood", reason="unsupported_crit"
        )
    if "b64" in header and header["b64"] is not True:
        raise MalformedToken("unencoded payload (b64) is not accepted", reason="forbidden_header")
    alg = header.get("alg")
    if type(alg) is not str:
        raise MalformedToken("header 'alg' is missing or not a string", reason="malformed")
    kid = _header_kid(header)
    typ = header.get("typ")
    if typ is not None:
        if type(typ) is not str:
            raise MalformedToken("header 'typ' is not a string", reason="malformed")
        typ = _normalize_typ(typ)
    entry: _Header = (kid, alg, typ, MappingProxyType(header))
    if len(segment) <= _HEADER_CACHE_MAX_SEGMENT:
        if len(_header_cache) >= _HEADER_CACHE_MAX:
            # Clearing (not LRU) keeps this lock-free; a flood costs re-parsing, nothing more.
            _header_cache.clear()
        _header_cache[segment] = entry
    return entry


def _header_kid(header: Mapping[str, Any]) -> str:
    kid = header.get("kid")
    if kid is None or kid == "":
        raise KeyNotFound("token names no key (no 'kid')", reason="missing_kid")
    if type(kid) is not str:
        raise MalformedToken("header 'kid' is not a string", reason="malformed")
    if len(kid) > constants.max_kid_chars:
        raise MalformedToken(
            f"header 'kid' is longer than {constants.max_kid_chars} characters", reason="malformed"
        )
    return kid


def _shape_error(raw: bytes, segments: int) -> MalformedToken:
    if segments == 5:
        return MalformedToken("JWE is not accepted", reason="unsupported_serialization")
    if raw.lstrip()[:1] == b"{":
        return MalformedToken(
            "JWS JSON serialization is not accepted", reason="unsupported_serialization"
        )
    return MalformedToken(f"token has {segments} segments, not 3", reason="malformed")


def _verified(
    token: str, keys: Mapping[str, PublicKey], options: VerifyOptions, gone: Mapping[str, str]
) -> tuple[_Header, bytes]:
    if type(token) is not str:
        raise MalformedToken("token is not a string", reason="malformed")
    if len(token) > options.max_token_bytes:
        raise MalformedToken(
            f"token is longer than {options.max_token_bytes} bytes", reason="token_too_large"
        )
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedToken("token is not ASCII", reason="malformed") from None
    # One translate for the whole token: the segments come out in the standard alphabet,
    # ready for a2b_base64, at the same offsets (dots and lengths are kept).
    parts = raw.translate(URLSAFE_TO_STD).split(b".")
    if len(parts) != 3:
        raise _shape_error(raw, len(parts))
    header_segment, payload_segment, signature_segment = parts
    entry = _cached_header(header_segment)
    if entry is None:
        entry = _parse_header(header_segment)
    kid, alg, typ, _ = entry
    if options._typ is not None and typ != options._typ:
        raise MalformedToken(f"token typ is not {options.typ!r}", reason="wrong_typ")
    if alg not in options.algorithms:
        raise BadSignature(f"algorithm {alg!r} is not accepted", reason="alg_not_allowed")
    if gone and kid in gone:
        reason = gone[kid]
        raise KeyNotUsable(
            f"key {kid!r} no longer verifies",
            reason=reason if reason in _GONE_REASONS else "revoked_key",
        )
    key = keys.get(kid)
    if key is None:
        error = KeyNotFound(f"no key {kid!r}", reason="unknown_kid")
        error.kid = kid
        raise error
    if alg != key.alg:
        raise BadSignature(f"token alg {alg!r} is not the key's {key.alg!r}", reason="alg_mismatch")
    payload, signature = b64_std_decode_pair(payload_segment, signature_segment)
    if not key.verify(signature, raw[: len(header_segment) + 1 + len(payload_segment)]):
        raise BadSignature("signature does not verify", reason="bad_signature")
    return entry, payload


def verify_signature(
    token: str,
    keys: Mapping[str, PublicKey],
    options: VerifyOptions,
    gone: Mapping[str, str] = EMPTY,
) -> tuple[Mapping[str, Any], bytes]:
    """Check a compact JWS up to and including its signature; the payload is not parsed.

    :param token: the compact JWS.
    :param keys: ``kid`` -> key for every key that may verify (pending, active, retiring).
    :param options: only ``algorithms``, ``typ`` and ``max_token_bytes`` are used here.
    :param gone: ``kid`` -> ``"revoked_key"`` or ``"retired_key"`` for keys that must not
        verify; it wins over ``keys``.
    :returns: the header (read-only) and the signed payload bytes.
    :raises InvalidToken: a subclass whose ``reason`` says why.
    """
    (_, _, _, header), payload = _verified(token, keys, options, gone)
    return header, payload


def _bad_number(claims: Mapping[str, Any], name: str) -> InvalidClaims:
    if name not in claims:
        return InvalidClaims(f"token has no {name!r}", reason="missing_claim")
    return InvalidClaims(f"claim {name!r} is not a finite number", reason="invalid_claim")


# One flat function on purpose: it runs for every token, and each extra call costs about as
# much as the checks it would hold.
def check_claims(claims: Mapping[str, Any], options: VerifyOptions, now: float) -> None:  # noqa: C901
    """Check the registered claims of a token whose signature has verified.

    ``iss`` must equal the issuer; ``aud`` (a string or a non-empty list of strings) must
    contain an accepted audience; ``exp`` is required; ``exp``, ``nbf`` and ``iat`` must be
    numbers, with ``leeway_s`` of tolerance: expired when ``now >= exp + leeway``, not yet
    valid when ``now + leeway < nbf``, issued in the future when ``iat > now + leeway``.

    :raises InvalidClaims: ``reason`` is ``missing_claim``, ``invalid_claim``,
        ``wrong_issuer``, ``wrong_audience``, ``expired``, ``not_yet_valid`` or
        ``issued_in_future``.
    """
    iss = claims.get("iss")
    if iss is None:
        raise InvalidClaims("token has no 'iss'", reason="missing_claim")
    if iss != options.issuer:
        raise InvalidClaims("token 'iss' is not the expected issuer", reason="wrong_issuer")
    aud = claims.get("aud")
    if type(aud) is str:
        matched = aud in options._audiences
    else:
        matched = _audience_list_matches(aud, options._audiences)
    if not matched:
        raise InvalidClaims("token 'aud' holds no accepted audience", reason="wrong_audience")
    # JSON numbers arrive as int or float; bool (an int subclass) is refused, and so is an
    # infinite float (1e400 parses as one), which would make a token that never expires.
    leeway = options.leeway_s
    exp = claims.get("exp")
    if type(exp) is not int and (type(exp) is not float or not isfinite(exp)):
        raise _bad_number(claims, "exp")
    if now - leeway >= exp:  # not exp + leeway: an int exp of 400 digits overflows a float
        raise InvalidClaims("token has expired", reason="expired")
    if "nbf" in claims:
        nbf = claims["nbf"]
        if type(nbf) is not int and (type(nbf) is not float or not isfinite(nbf)):
            raise _bad_number(claims, "nbf")
        if now + leeway < nbf:
            raise InvalidClaims("token is not valid yet", reason="not_yet_valid")
    if "iat" in claims:
        iat = claims["iat"]
        if type(iat) is not int and (type(iat) is not float or not isfinite(iat)):
            raise _bad_number(claims, "iat")
        if iat > now + leeway:
            raise InvalidClaims("token was issued in the future", reason="issued_in_future")


def _audience_list_matches(aud: Any, audiences: frozenset[str]) -> bool:
    if aud is None:
        raise InvalidClaims("token has no 'aud'", reason="missing_claim")
    if type(aud) is not list or not aud or not all(type(a) is str for a in aud):
        raise InvalidClaims("token 'aud' is not a string or strings", reason="invalid_claim")
    return not audiences.isdisjoint(aud)


def verify_token(
    token: str,
    keys: Mapping[str, PublicKey],
    options: VerifyOptions,
    now: float,
    gone: Mapping[str, str] = EMPTY,
) -> dict[str, Any]:
    """Verify a compact JWS access token and return its claims. CPU only.

    :param token: the compact JWS, at most ``options.max_token_bytes`` long.
    :param keys: ``kid`` -> key for every key that may verify (pending, active, retiring).
    :param options: the issuer, audience and policy the token must satisfy.
    :param now: the current time, seconds since the epoch.
    :param gone: ``kid`` -> ``"revoked_key"`` or ``"retired_key"`` for keys that must not
        verify; it wins over ``keys``.
    :returns: the claims, a fresh dictionary the caller may keep.
    :raises InvalidToken: a subclass whose ``reason`` says why (see ``TOKEN_REASONS``).
    """
    payload = _verified(token, keys, options, gone)[1]
    claims = strict_json_object(payload)
    check_claims(claims, options, now)
    return claims
