"""Signing-key material: generate a key, derive its public JWK and ``kid``, (de)serialise it.

``kid`` is the RFC 7638 thumbprint of the public JWK, so a kid names exactly one key and any
party can recompute it. Private keys leave this module only as PKCS#8 DER for :mod:`issuer.kek`
to seal; they are never logged and never part of a JWK we build.
"""

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from subscriber.jwk import MIN_RSA_BITS, RSA_ALGS, thumbprint
from subscriber.jws import b64url_encode
from subscriber.signatures import EC_CURVES

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RSA_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A freshly generated or unsealed signing key."""

    kid: str
    alg: str
    private_key: PrivateKey = field(repr=False)
    jwk: dict[str, Any] = field(repr=False)

    def private_der(self) -> bytes:
        """PKCS#8 DER, unencrypted: only ever handed to :meth:`issuer.kek.Kek.seal`."""
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or (value.bit_length() + 7) // 8, "big")


def public_jwk(private_key: PrivateKey, alg: str) -> dict[str, Any]:
    """The public JWK of ``private_key`` with ``kid`` (thumbprint), ``alg`` and ``use``."""
    jwk: dict[str, Any]
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "n": b64url_encode(_int_bytes(numbers.n)),
            "e": b64url_encode(_int_bytes(numbers.e)),
        }
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        point = private_key.public_key().public_numbers()
        crv, _, size = EC_CURVES[alg]
        jwk = {
            "kty": "EC",
            "crv": crv,
            "x": b64url_encode(_int_bytes(point.x, size)),
            "y": b64url_encode(_int_bytes(point.y, size)),
        }
    else:
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    jwk.update(kid=thumbprint(jwk), alg=alg, use="sig")
    return jwk


def generate(alg: str, *, rsa_bits: int = RSA_BITS) -> KeyPair:
    """A new signing key for ``alg`` (any of ``subscriber.jwk.SUPPORTED_ALGS``).

    :raises ValueError: an unsupported ``alg`` or an RSA size below 2048 bits.
    """
    private_key: PrivateKey
    if alg in RSA_ALGS:
        if rsa_bits < MIN_RSA_BITS:
            raise ValueError(
                f"RSA keys must have at least {MIN_RSA_BITS} bits, the input is {rsa_bits}"
            )
        private_key = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, rsa_bits)
    elif alg in EC_CURVES:
        private_key = ec.generate_private_key(EC_CURVES[alg][1])
    elif alg == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f'unsupported algorithm "{alg}"')
    jwk = public_jwk(private_key, alg)
    return KeyPair(kid=jwk["kid"], alg=alg, private_key=private_key, jwk=jwk)


def load(der: bytes, alg: str) -> KeyPair:
    """Rebuild a :class:`KeyPair` from PKCS#8 DER (as unsealed from the store).

    :raises ValueError: the DER is not a key of the type ``alg`` needs.
    """
    private_key = serialization.load_der_private_key(der, password=None)
    expected: type | None = None
    if alg in RSA_ALGS:
        expected = rsa.RSAPrivateKey
    elif alg in EC_CURVES:
        expected = ec.EllipticCurvePrivateKey
    elif alg == "EdDSA":
        expected = ed25519.Ed25519PrivateKey
    if expected is None or not isinstance(private_key, expected):
        raise ValueError(f'stored key does not match algorithm "{alg}"')
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and not isinstance(
        private_key.curve, type(EC_CURVES[alg][1])
    ):
        raise ValueError(f'stored key is not on the curve of algorithm "{alg}"')
    jwk = public_jwk(private_key, alg)  # type: ignore[arg-type]
    return KeyPair(kid=jwk["kid"], alg=alg, private_key=private_key, jwk=jwk)  # type: ignore[arg-type]
