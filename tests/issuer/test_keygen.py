"""Key generation: every algorithm, kid = RFC 7638 thumbprint, tokens verify independently."""

import jwt
import pytest

from issuer import keygen
from issuer.signer import encode_jwt
from subscriber.jwk import PRIVATE_MEMBERS, SUPPORTED_ALGS, load_public_jwk


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_generated_key_signs_what_pyjwt_verifies(alg: str) -> None:
    pair = keygen.generate(alg)
    assert not PRIVATE_MEMBERS & pair.jwk.keys()
    assert pair.jwk["alg"] == alg and pair.jwk["use"] == "sig"
    # jwcrypto computes the RFC 7638 thumbprint independently of our implementation.
    from jwcrypto.jwk import JWK

    assert JWK(**pair.jwk).thumbprint() == pair.kid
    token = encode_jwt(pair, {"sub": "x"})
    key = jwt.PyJWK(pair.jwk).key
    assert jwt.decode(token, key, algorithms=[alg]) == {"sub": "x"}
    public = load_public_jwk(pair.jwk)
    assert public.kid == pair.kid and public.alg == alg
    # And PyJWT's tokens verify with our check: the two implementations agree on the wire.
    signing_input, _, signature = jwt.encode({"sub": "y"}, pair.private_key, alg).rpartition(".")
    from subscriber.jws import b64url_decode

    assert public.verify(b64url_decode(signature), signing_input.encode())


def test_rsa_is_at_least_2048_bits() -> None:
    pair = keygen.generate("RS256")
    assert pair.private_key.key_size >= 2048  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="2048"):
        keygen.generate("RS256", rsa_bits=1024)


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_der_roundtrip_keeps_the_kid(alg: str) -> None:
    pair = keygen.generate(alg)
    assert keygen.load(pair.private_der(), alg).kid == pair.kid


def test_load_refuses_a_key_of_another_algorithm() -> None:
    with pytest.raises(ValueError, match="ES256"):
        keygen.load(keygen.generate("EdDSA").private_der(), "ES256")
    with pytest.raises(ValueError, match="ES384"):
        keygen.load(keygen.generate("ES256").private_der(), "ES384")
