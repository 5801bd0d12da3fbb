"""One pre-bound signature check per JWS algorithm (RFC 7518 section 3), built once per key.

``verifier_for(alg, key)`` returns ``verify(signature, signing_input) -> bool``: it never
raises for a bad signature, and a signature of the wrong length is simply bad. The hot path
calls nothing else, so each closure binds what it needs (hash, padding, expected size).

- RS256/384/512: RSASSA-PKCS1-v1_5 as "recover, then compare the whole encoded message";
- PS256/384/512: RSASSA-PSS with MGF1 of the same hash and a salt as long as the hash
  (RFC 7518 3.5 fixes both), prehashed with hashlib;
- ES256/384/512: ECDSA over P-256/P-384/P-521, the JWS ``r || s`` form converted to DER;
- EdDSA: Ed25519.
"""

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

#: ``verify(signature, signing_input) -> bool``; never raises for a bad signature.
VerifyFn = Callable[[bytes, bytes], bool]

_HASHES: dict[str, tuple[Callable[..., Any], hashes.HashAlgorithm]] = {
    "256": (hashlib.sha256, hashes.SHA256()),
    "384": (hashlib.sha384, hashes.SHA384()),
    "512": (hashlib.sha512, hashes.SHA512()),
}

# DigestInfo prefixes (RFC 8017 section 9.2, note 1): the fixed start of the PKCS #1 v1.5
# encoded message T = DigestInfo || H(M).
_DIGEST_INFO = {
    "256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

#: JWS algorithm -> (curve, coordinate bytes) of its EC key (RFC 7518 3.4: P-521 uses 66).
EC_CURVES: dict[str, tuple[str, ec.EllipticCurve, int]] = {
    "ES256": ("P-256", ec.SECP256R1(), 32),
    "ES384": ("P-384", ec.SECP384R1(), 48),
    "ES512": ("P-521", ec.SECP521R1(), 66),
}
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def _rsa_pkcs1_verifier(key: rsa.RSAPublicKey, bits: str) -> VerifyFn:
    pkcs1 = padding.PKCS1v15()
    recover = key.recover_data_from_signature
    size = (key.key_size + 7) // 8
    digest_info = _DIGEST_INFO[bits]
    digest = _HASHES[bits][0]

    def verify(signature: bytes, signing_input: bytes) -> bool:
        # RSASSA-PKCS1-v1_5-VERIFY (RFC 8017 8.2.2) as "recover, then compare the whole
        # encoded message": OpenSSL checks 00 01 FF..FF 00, and what follows must be exactly
        # DigestInfo || H(M), which also fixes the padding length. Same verdicts as
        # key.verify (Wycheproof agrees), about 8% faster: no digest context per call.
        if len(signature) != size:
            return False
        try:
            recovered = recover(signature, pkcs1, None)
        except InvalidSignature:
            return False
        return hmac.compare_digest(recovered, digest_info + digest(signing_input).digest())

    return verify


def _rsa_pss_verifier(key: rsa.RSAPublicKey, bits: str) -> VerifyFn:
    digest, algorithm = _HASHES[bits]
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    prehashed = Prehashed(algorithm)
    size = (key.key_size + 7) // 8
    check = key.verify

    def verify(signature: bytes, signing_input: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            check(signature, digest(signing_input).digest(), pss, prehashed)
        except InvalidSignature:
            return False
        return True

    return verify


# DER headers by length: SEQUENCE { INTEGER r, INTEGER s } is built by one join (r and s are
# at most 33 bytes, so every length fits the short form).
_DER_SEQUENCE = tuple(bytes((0x30, n)) for n in range(71))
_DER_INTEGER = tuple(bytes((0x02, n)) for n in range(34))


# When neither integer has a leading zero byte (254 signatures in 256) only the sign padding
# varies: the DER around r and s is one of these, chosen by the top bits of r and s.
_DER_HEAD = tuple(
    tuple(bytes((0x30, 68 + rh + sh, 0x02, 32 + rh)) + b"\0" * rh for sh in (0, 1)) for rh in (0, 1)
)
_DER_MID = tuple(bytes((0x02, 32 + sh)) + b"\0" * sh for sh in (0, 1))


def p1363_to_der(signature: bytes) -> bytes:
    """The DER form ``cryptography`` verifies of a 64-byte JWS ES256 signature ``r || s``.

    Same bytes as ``encode_dss_signature`` on the two integers, at about a quarter of the cost.
    """
    r0, s0 = signature[0], signature[32]
    if r0 and s0:
        rh, sh = r0 >> 7, s0 >> 7
        return _DER_HEAD[rh][sh] + signature[:32] + _DER_MID[sh] + signature[32:]
    r = signature[:32].lstrip(b"\0") or b"\0"
    s = signature[32:].lstrip(b"\0") or b"\0"
    # DER integers are signed: a high bit set needs a leading zero byte.
    if r[0] > 127:
        r = b"\0" + r
    if s[0] > 127:
        s = b"\0" + s
    return b"".join(
        (_DER_SEQUENCE[len(r) + len(s) + 4], _DER_INTEGER[len(r)], r, _DER_INTEGER[len(s)], s)
    )


def _es256_verifier(key: ec.EllipticCurvePublicKey) -> VerifyFn:
    # Hashing with hashlib and passing the digest skips a digest context per call (~1%).
    ecdsa = ec.ECDSA(Prehashed(hashes.SHA256()))
    sha256 = hashlib.sha256

    def verify(signature: bytes, signing_input: bytes) -> bool:
        # JWS carries r||s (RFC 7518 3.4), fixed 64 bytes; anything else (DER included) is bad.
        if len(signature) != 64:
            return False
        try:
            key.verify(p1363_to_der(signature), sha256(signing_input).digest(), ecdsa)
        except InvalidSignature:
            return False
        return True

    return verify


def _ec_verifier(key: ec.EllipticCurvePublicKey, bits: str, size: int) -> VerifyFn:
    digest, algorithm = _HASHES[bits]
    ecdsa = ec.ECDSA(Prehashed(algorithm))
    check = key.verify

    def verify(signature: bytes, signing_input: bytes) -> bool:
        # P-384 and P-521 verifications cost 4-10x an ES256 one, so the generic DER encoder
        # is a small share here; r and s are fixed-width halves (RFC 7518 3.4).
        if len(signature) != 2 * size:
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        try:
            check(encode_dss_signature(r, s), digest(signing_input).digest(), ecdsa)
        except InvalidSignature:
            return False
        return True

    return verify


def _ed_verifier(key: Ed25519PublicKey) -> VerifyFn:
    def verify(signature: bytes, signing_input: bytes) -> bool:
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True

    return verify


def verifier_for(alg: str, key: Any) -> VerifyFn:
    """The bound signature check of ``alg`` with ``key`` (of the type ``alg`` needs).

    :raises ValueError: ``alg`` is not one of the algorithms above, or the key does not fit.
    """
    family, bits = alg[:2], alg[2:]
    if family == "RS" and bits in _HASHES and isinstance(key, rsa.RSAPublicKey):
        return _rsa_pkcs1_verifier(key, bits)
    if family == "PS" and bits in _HASHES and isinstance(key, rsa.RSAPublicKey):
        return _rsa_pss_verifier(key, bits)
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
        return _es256_verifier(key)
    if alg in EC_CURVES and isinstance(key, ec.EllipticCurvePublicKey):
        return _ec_verifier(key, bits, EC_CURVES[alg][2])
    if alg == "EdDSA" and isinstance(key, Ed25519PublicKey):
        return _ed_verifier(key)
    raise ValueError(f"no verifier for alg {alg!r} with a {type(key).__name__}")
