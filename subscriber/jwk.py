"""Public JWKs to pre-parsed ``cryptography`` keys, with the strength checks RFC 8725 asks for.

A key is parsed once, when it enters the cache; the verification hot path only calls the
pre-bound ``verify`` of a :class:`PublicKey`.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .constants import max_kid_chars
from .errors import InvalidKey, MalformedToken
from .jws import b64url_decode, b64url_encode
from .signatures import EC_CURVES, RSA_ALGS, VerifyFn, p1363_to_der, verifier_for

__all__ = [
    "MIN_RSA_BITS",
    "PRIVATE_MEMBERS",
    "RSA_ALGS",
    "SUPPORTED_ALGS",
    "PublicKey",
    "is_roca_modulus",
    "load_jwks",
    "load_public_jwk",
    "p1363_to_der",
    "thumbprint",
]

#: The signing algorithms keyherald accepts (and its issuer can sign with): those hosted
#: identity providers use. Never ``none``, never HS*.
SUPPORTED_ALGS = (
    "RS256",
    "ES256",
    "EdDSA",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES384",
    "ES512",
)
MIN_RSA_BITS = 2048
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# An EC or OKP key's curve fixes its algorithm; an RSA key fits six, so its JWK must name one
# (or the caller must know it: see load_public_jwk's default_alg).
_ALG_FOR_CURVE: dict[tuple[str, str], str] = {
    **{("EC", crv): alg for alg, (crv, _, _) in EC_CURVES.items()},
    ("OKP", "Ed25519"): "EdDSA",
}
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}

AnyPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key, parsed once: the hot path calls :attr:`verify` and nothing else."""

    kid: str
    alg: str
    key: AnyPublicKey = field(repr=False)
    jwk: Mapping[str, Any] = field(repr=False, compare=False)
    verify: VerifyFn = field(repr=False, compare=False)


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 JWK thumbprint, base64url."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise InvalidKey(f"unsupported kty {kty!r}", reason="unsupported_key")
    try:
        canonical = {m: jwk[m] for m in members}
    except KeyError as e:
        raise InvalidKey(f"JWK lacks member {e.args[0]!r}", reason="bad_jwk") from e
    digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode())
    return b64url_encode(digest.digest())


# ROCA (CVE-2017-15361): Infineon-generated primes are 65537^a mod M + k*M, so for every small
# prime p dividing M, n mod p lies in the subgroup that 65537 generates mod p. A random modulus
# passes all 38 tests with negligible probability. Primes from the authors' detector
# (github.com/crocs-muni/roca); each mask has bit r set when r is in that subgroup.
_ROCA_PRIMES = (
    3,
    5,
    7,
    11,
    13,
    17,
    19,
    23,
    29,
    31,
    37,
    41,
    43,
    47,
    53,
    59,
    61,
    67,
    71,
    73,
    79,
    83,
    89,
    97,
    101,
    103,
    107,
    109,
    113,
    127,
    131,
    137,
    139,
    149,
    151,
    157,
    163,
    167,
)


def _subgroup_mask(p: int) -> int:
    mask, r = 0, 1
    while not mask >> r & 1:
        mask |= 1 << r
        r = r * 65537 % p
    return mask


_ROCA_MASKS = tuple((p, _subgroup_mask(p)) for p in _ROCA_PRIMES)


def is_roca_modulus(n: int) -> bool:
    """Whether an RSA modulus carries the ROCA fingerprint (its private key is recoverable)."""
    return all(mask >> (n % p) & 1 for p, mask in _ROCA_MASKS)


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise InvalidKey(f"JWK member {name!r} missing or not a string", reason="bad_jwk")
    try:
        return b64url_decode(value)
    except MalformedToken as e:
        raise InvalidKey(f"JWK member {name!r} is not base64url", reason="bad_jwk") from e


def _load_rsa(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    n_bytes = _member(jwk, "n")
    n = int.from_bytes(n_bytes, "big")
    e = int.from_bytes(_member(jwk, "e"), "big")
    if n.bit_length() < MIN_RSA_BITS:
        raise InvalidKey(
            f"RSA key of {n.bit_length()} bits is below the {MIN_RSA_BITS}-bit minimum",
            reason="weak_key",
        )
    if e < 3 or e % 2 == 0:
        raise InvalidKey(f"RSA public exponent {e} is not acceptable", reason="weak_key")
    if n_bytes[0] == 0:
        # RFC 7518 6.3.1.1: the modulus is unsigned; a leading zero octet must not be sent.
        raise InvalidKey("RSA modulus has a leading zero octet", reason="bad_jwk")
    if is_roca_modulus(n):
        raise InvalidKey("RSA modulus has the ROCA fingerprint (CVE-2017-15361)", reason="weak_key")
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as err:
        raise InvalidKey("RSA key rejected by the crypto backend", reason="bad_jwk") from err
    return key


def _load_ec(jwk: Mapping[str, Any], alg: str) -> AnyPublicKey:
    crv, curve, size = EC_CURVES[alg]
    x, y = _member(jwk, "x"), _member(jwk, "y")
    if len(x) != size or len(y) != size:
        raise InvalidKey(f"{crv} coordinates must be {size} bytes each", reason="bad_jwk")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
    )
    try:
        return numbers.public_key()  # refuses a point that is not on the curve
    except ValueError as err:
        raise InvalidKey(f"EC point is not on {crv}", reason="bad_jwk") from err


# The eight points of small order on edwards25519, canonically encoded (identity, the point
# of order 2, two of order 4, four of order 8). A signature under such a key can verify for
# many messages (RFC 8032 implementations differ in what they accept), so none is a key.
ED25519_SMALL_ORDER: Final = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
)


def _load_okp(jwk: Mapping[str, Any]) -> AnyPublicKey:
    x = _member(jwk, "x")
    if len(x) != 32:
        raise InvalidKey("Ed25519 public key must be 32 bytes", reason="bad_jwk")
    if x in ED25519_SMALL_ORDER:
        raise InvalidKey("Ed25519 public key is a point of small order", reason="weak_key")
    return Ed25519PublicKey.from_public_bytes(x)


def _algorithm(jwk: Mapping[str, Any], default_alg: str | None) -> str:
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise InvalidKey("JWK alg is not a string", reason="bad_jwk")
    if kty == "RSA" and crv is None:
        if alg is None:
            alg = default_alg
        if alg is None:
            raise InvalidKey(
                "RSA JWK has no alg and none was given: it fits " + ", ".join(RSA_ALGS),
                reason="missing_alg",
            )
        if alg not in RSA_ALGS:
            raise InvalidKey(f"alg {alg!r} does not fit an RSA key", reason="unsupported_key")
        return alg
    fixed = (
        _ALG_FOR_CURVE.get((kty, crv)) if isinstance(kty, str) and isinstance(crv, str) else None
    )
    if fixed is None:
        raise InvalidKey(f"unsupported key type {kty!r}/{crv!r}", reason="unsupported_key")
    if alg is not None and alg != fixed:
        raise InvalidKey(f"alg {alg!r} does not fit a {kty} {crv} key", reason="unsupported_key")
    return fixed


def load_public_jwk(jwk: Mapping[str, Any], *, default_alg: str | None = None) -> PublicKey:
    """Parse and check one public JWK.

    :param jwk: a JWK object with ``kid``; ``alg``, when present, must fit the key type. An EC
        or OKP key's curve fixes its algorithm; an RSA key fits six algorithms, so an RSA JWK
        without ``alg`` needs ``default_alg``.
    :param default_alg: the algorithm of an RSA JWK that names none (the caller knows it,
        e.g. the only RSA algorithm its issuer advertises); ignored for other key types.
    :raises InvalidKey: private material present, weak or unsupported key, malformed members,
        an RSA key with no algorithm (``missing_alg``), or a ``use``/``key_ops`` that forbids
        signature verification.
    """
    if not isinstance(jwk, Mapping):
        raise InvalidKey("JWK is not an object", reason="bad_jwk")
    # Type and algorithm first, so a symmetric (HS*) or otherwise foreign key reads as
    # unsupported_key, not as a private-material mistake.
    alg = _algorithm(jwk, default_alg)
    if PRIVATE_MEMBERS & jwk.keys():
        raise InvalidKey("JWK carries private key material", reason="private_key_material")
    if jwk.get("use", "sig") != "sig":
        raise InvalidKey("JWK use is not 'sig'", reason="bad_jwk")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise InvalidKey("JWK key_ops does not allow 'verify'", reason="bad_jwk")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidKey("JWK has no kid", reason="bad_jwk")
    if len(kid) > max_kid_chars:
        # A token naming it would be refused before the lookup, so the key could never verify.
        raise InvalidKey(f"JWK kid is longer than {max_kid_chars} characters", reason="bad_jwk")
    key: AnyPublicKey
    if alg in RSA_ALGS:
        key = _load_rsa(jwk)
    elif alg == "EdDSA":
        key = _load_okp(jwk)
    else:
        key = _load_ec(jwk, alg)
    public = {k: v for k, v in jwk.items() if k not in PRIVATE_MEMBERS}
    return PublicKey(kid=kid, alg=alg, key=key, jwk=public, verify=verifier_for(alg, key))


def load_jwks(jwks: Mapping[str, Any], *, default_alg: str | None = None) -> dict[str, PublicKey]:
    """Parse a whole JWK Set strictly: every key must load and every ``kid`` be unique.

    A set with two keys under one ``kid`` is refused outright: which of them a verifier picks
    would be an accident of ordering (Wycheproof ``DuplicateKid``).

    :param jwks: a JWK Set object, ``{"keys": [...]}``.
    :returns: ``kid`` -> key.
    :raises InvalidKey: the first key that fails :func:`load_public_jwk`, or
        ``reason="duplicate_kid"``, or ``bad_jwk`` when the set itself is malformed.
    """
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise InvalidKey("JWK Set has no 'keys' list", reason="bad_jwk")
    loaded: dict[str, PublicKey] = {}
    for jwk in keys:
        key = load_public_jwk(jwk, default_alg=default_alg)
        if key.kid in loaded:
            raise InvalidKey(f"JWK Set has two keys with kid {key.kid!r}", reason="duplicate_kid")
        loaded[key.kid] = key
    return loaded
