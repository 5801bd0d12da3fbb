"""Test key material shared by the test packages."""

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from subscriber.jwk import thumbprint
from subscriber.jws import b64url_encode


def es256_jwk() -> dict[str, Any]:
    """A fresh ES256 public JWK, ``kid`` = RFC 7638 thumbprint."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    jwk: dict[str, Any] = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }
    jwk.update(kid=thumbprint(jwk), alg="ES256", use="sig")
    return jwk
