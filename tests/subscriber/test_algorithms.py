"""Every supported algorithm end to end, and that no signature crosses from one to another.

The issuer's own key generation and signer (``issuer.keygen``, ``issuer.signer``) mint the
tokens; PyJWT's agreement on the wire is checked in ``tests/issuer/test_keygen.py`` and the
Wycheproof vectors in ``test_wycheproof.py``.
"""

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from issuer import keygen
from issuer.signer import encode_jwt, sign_bytes
from subscriber.errors import InvalidToken
from subscriber.jwk import RSA_ALGS, SUPPORTED_ALGS, load_public_jwk
from subscriber.verify import VerifyOptions, verify_token

ISSUER = "https://idp.example"
NOW = 1_700_000_000.0
OPTIONS = VerifyOptions(issuer=ISSUER, audience="api")
CLAIMS = {"iss": ISSUER, "aud": "api", "sub": "u", "exp": int(NOW) + 60}


@pytest.fixture(scope="module")
def rsa_pair() -> keygen.KeyPair:
    return keygen.generate("RS256")


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_each_algorithm_verifies_its_own_tokens(alg: str) -> None:
    pair = keygen.generate(alg)
    key = load_public_jwk(pair.jwk)
    token = encode_jwt(pair, CLAIMS)
    assert verify_token(token, {key.kid: key}, OPTIONS, NOW)["sub"] == "u"
    head, _, signature = token.rpartition(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    with pytest.raises(InvalidToken) as info:
        verify_token(f"{head}.{flipped}", {key.kid: key}, OPTIONS, NOW)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize("signed_as", RSA_ALGS)
def test_one_rsa_key_under_six_algorithms_verifies_only_its_own(
    rsa_pair: keygen.KeyPair, signed_as: str
) -> None:
    """The same modulus labelled RS256..PS512: a signature made for one scheme and hash
    verifies under that label only (no PKCS #1 / PSS or hash confusion)."""
    signer = keygen.KeyPair(rsa_pair.kid, signed_as, rsa_pair.private_key, rsa_pair.jwk)
    message = b"header.payload"
    signature = sign_bytes(signer, message)
    for label in RSA_ALGS:
        key = load_public_jwk({**rsa_pair.jwk, "alg": label})
        assert key.verify(signature, message) is (label == signed_as), label


@pytest.mark.parametrize(
    ("alg", "curve", "size"), [("ES384", ec.SECP384R1(), 48), ("ES512", ec.SECP521R1(), 66)]
)
def test_ec_signatures_must_be_fixed_width(alg: str, curve: ec.EllipticCurve, size: int) -> None:
    """RFC 7518 3.4: r and s are each exactly the curve's width. A signature whose s has a
    leading zero octet, sent without it, is the same integers in another spelling: refused."""
    pair = keygen.generate(alg)
    key = load_public_jwk(pair.jwk)
    private = pair.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    digest = hashes.SHA384() if alg == "ES384" else hashes.SHA512()
    for attempt in range(5_000):
        message = b"m%d" % attempt
        r, s = decode_dss_signature(private.sign(message, ec.ECDSA(digest)))
        if s < 1 << (8 * (size - 1)):
            break
    else:  # pragma: no cover - 1 signature in 256 has a short s
        pytest.fail("no signature with a short s in 5,000 tries")
    fixed = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert key.verify(fixed, message)
    assert not key.verify(r.to_bytes(size, "big") + s.to_bytes(size - 1, "big"), message)
    assert not key.verify(fixed + b"\0", message)
    assert not key.verify(b"\0" + fixed, message)
