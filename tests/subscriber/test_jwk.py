"""Loading public JWKs: strength checks at load, and the pre-bound verify of each key."""

import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from subscriber.errors import InvalidKey
from subscriber.jwk import (
    is_roca_modulus,
    load_jwks,
    load_public_jwk,
    p1363_to_der,
    thumbprint,
)
from subscriber.jws import b64url_encode


def _int(value: int, size: int | None = None) -> str:
    return b64url_encode(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, **extra: Any) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": _int(nums.n), "e": _int(nums.e)} | extra


def ec_jwk(key: ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "kid": "e1",
        "x": _int(nums.x, 32),
        "y": _int(nums.y, 32),
    } | extra


def refused(jwk: Any) -> str:
    with pytest.raises(InvalidKey) as info:
        load_public_jwk(jwk)
    return info.value.reason


def test_keys_load_with_the_algorithm_their_type_implies(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    assert load_public_jwk(rsa_jwk(rsa_key)).alg == "RS256"
    assert load_public_jwk(rsa_jwk(rsa_key, alg="PS384")).alg == "PS384"
    assert load_public_jwk(ec_jwk(ec_key, alg="ES256", use="sig")).alg == "ES256"
    assert load_public_jwk(ec_jwk(ec_key)).alg == "ES256"
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ed = load_public_jwk({"kty": "OKP", "crv": "Ed25519", "kid": "o1", "x": b64url_encode(raw)})
    assert ed.alg == "EdDSA" and ed.kid == "o1"


def test_an_rsa_key_without_alg_needs_one_from_the_caller(rsa_key: rsa.RSAPrivateKey) -> None:
    """Six algorithms fit an RSA key: guessing one would be an accident, so it is refused."""
    bare = {k: v for k, v in rsa_jwk(rsa_key).items() if k != "alg"}
    assert refused(bare) == "missing_alg"
    assert load_public_jwk(bare, default_alg="RS512").alg == "RS512"
    # The JWK's own alg wins, and a default that is not an RSA algorithm fits nothing.
    assert load_public_jwk(bare | {"alg": "PS256"}, default_alg="RS512").alg == "PS256"
    with pytest.raises(InvalidKey) as info:
        load_public_jwk(bare, default_alg="ES256")
    assert info.value.reason == "unsupported_key"
    # The default never applies to a key type whose curve fixes the algorithm.
    ec_key = ec.generate_private_key(ec.SECP384R1())
    nums = ec_key.public_key().public_numbers()
    es = {"kty": "EC", "crv": "P-384", "kid": "e", "x": _int(nums.x, 48), "y": _int(nums.y, 48)}
    assert load_public_jwk(es, default_alg="RS256").alg == "ES384"


@pytest.mark.parametrize(
    ("alg", "crv", "curve", "size"),
    [
        ("ES256", "P-256", ec.SECP256R1(), 32),
        ("ES384", "P-384", ec.SECP384R1(), 48),
        ("ES512", "P-521", ec.SECP521R1(), 66),
    ],
)
def test_ec_curves_fix_the_algorithm_and_the_width(
    alg: str, crv: str, curve: ec.EllipticCurve, size: int
) -> None:
    key = ec.generate_private_key(curve)
    nums = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": crv, "kid": "e", "x": _int(nums.x, size), "y": _int(nums.y, size)}
    public = load_public_jwk(jwk)
    assert public.alg == alg
    for other in ("ES256", "ES384", "ES512"):
        if other != alg:
            assert refused(jwk | {"alg": other}) == "unsupported_key"
    # RFC 7518 6.2.1.2: coordinates are the full width of the field, leading zeros kept.
    assert refused(jwk | {"x": _int(nums.x, size + 1)}) == "bad_jwk"
    assert refused(jwk | {"y": _int((nums.y + 1) % 2 ** (8 * size), size)}) == "bad_jwk"


def test_verify_is_bound_and_never_raises_for_bad_signatures(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rs = load_public_jwk(rsa_jwk(rsa_key))
    signature = rsa_key.sign(b"msg", padding.PKCS1v15(), hashes.SHA256())
    assert rs.verify(signature, b"msg")
    assert not rs.verify(signature, b"msh")
    assert not rs.verify(signature[:-1], b"msg")
    assert not rs.verify(b"", b"msg")
    es = load_public_jwk(ec_jwk(ec_key))
    der = ec_key.sign(b"msg", ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    assert es.verify(r.to_bytes(32, "big") + s.to_bytes(32, "big"), b"msg")
    assert not es.verify(der, b"msg")  # DER is not JWS
    assert not es.verify(r.to_bytes(33, "big") + s.to_bytes(32, "big"), b"msg")
    assert not es.verify(bytes(64), b"msg")


def test_weak_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(65537, 1024)
    assert refused(rsa_jwk(small)) == "weak_key"
    nums = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    for e in (1, 2, 65536):
        jwk = {"kty": "RSA", "kid": "r", "alg": "RS256", "n": _int(nums.n), "e": _int(e)}
        assert refused(jwk) == "weak_key"


def test_roca_fingerprint() -> None:
    # The first masks of the detector published with the ROCA paper (crocs-muni/roca).
    from subscriber.jwk import _ROCA_MASKS

    assert [mask for _, mask in _ROCA_MASKS[:8]] == [
        6,
        30,
        126,
        1026,
        5658,
        107286,
        199410,
        8388606,
    ]
    # ROCA primes are 65537^a mod M (+ k*M), so n is a power of 65537 modulo each small
    # prime of M: any power of 65537 carries the fingerprint, ordinary moduli do not.
    assert is_roca_modulus(65537**18)
    for _ in range(5):
        assert not is_roca_modulus(
            rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
        )


def test_ec_points_must_be_on_the_curve(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = ec_jwk(ec_key)
    nums = ec_key.public_key().public_numbers()
    assert refused(jwk | {"y": _int((nums.y + 1) % 2**256, 32)}) == "bad_jwk"
    assert refused(jwk | {"x": _int(nums.x, 33)}) == "bad_jwk"  # not 32 bytes
    assert refused(jwk | {"crv": "P-384"}) == "bad_jwk"  # P-256 coordinates are too short
    assert refused(jwk | {"crv": "P-192"}) == "unsupported_key"
    assert refused(jwk | {"crv": "secp256k1"}) == "unsupported_key"
    assert refused(jwk | {"crv": ["P-256"]}) == "unsupported_key"  # unhashable: no TypeError


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"d": "AAAA"}, "private_key_material"),
        ({"alg": "ES256"}, "unsupported_key"),
        ({"alg": "HS256"}, "unsupported_key"),
        ({"alg": "RSA-OAEP"}, "unsupported_key"),
        ({"alg": "none"}, "unsupported_key"),
        ({"alg": 256}, "bad_jwk"),
        ({"kty": "oct", "k": "AAAA"}, "unsupported_key"),
        ({"kty": ["RSA"]}, "unsupported_key"),
        ({"use": "enc"}, "bad_jwk"),
        ({"key_ops": ["encrypt"]}, "bad_jwk"),
        ({"key_ops": "verify"}, "bad_jwk"),
        ({"kid": ""}, "bad_jwk"),
        ({"kid": 1}, "bad_jwk"),
        ({"kid": "k" * 129}, "bad_jwk"),
        ({"n": "not base64!"}, "bad_jwk"),
        ({"n": 12345}, "bad_jwk"),
    ],
)
def test_refused_jwks(rsa_key: rsa.RSAPrivateKey, change: dict[str, Any], reason: str) -> None:
    assert refused(rsa_jwk(rsa_key) | change) == reason


def test_a_jwk_that_is_not_an_object_is_refused() -> None:
    assert refused(["RSA"]) == "bad_jwk"


def test_key_sets_refuse_duplicate_kids(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    keys = load_jwks({"keys": [ec_jwk(ec_key), rsa_jwk(rsa_key)]})
    assert sorted(keys) == ["e1", "r1"]
    with pytest.raises(InvalidKey) as info:
        load_jwks({"keys": [ec_jwk(ec_key), ec_jwk(other)]})
    assert info.value.reason == "duplicate_kid"
    for bad in ({}, {"keys": {}}, []):
        with pytest.raises(InvalidKey) as info:
            load_jwks(bad)  # type: ignore[arg-type]
        assert info.value.reason == "bad_jwk"
    with pytest.raises(InvalidKey) as info:
        load_jwks({"keys": [ec_jwk(ec_key), ec_jwk(other, kid="e2", d="AAAA")]})
    assert info.value.reason == "private_key_material"


def test_thumbprint_rfc7638_example() -> None:
    # RFC 7638 section 3.1.
    jwk = json.loads(
        '{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7'
        "aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
        "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNL"
        "yrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDK"
        'gw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}'
    )
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    r=st.one_of(st.integers(0, 2**256 - 1), st.sampled_from([0, 1, 127, 128, 255, 256, 2**255])),
    s=st.one_of(st.integers(0, 2**256 - 1), st.integers(0, 2**64)),
)
def test_p1363_to_der_matches_cryptography(r: int, s: int) -> None:
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert p1363_to_der(signature) == encode_dss_signature(r, s)


@pytest.fixture(scope="module")
def rsa_pair(rsa_key: rsa.RSAPrivateKey) -> tuple[rsa.RSAPrivateKey, Any]:
    return rsa_key, load_public_jwk(rsa_jwk(rsa_key))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    message=st.binary(max_size=64),
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 255), st.integers(1, 255))),
    scheme=st.sampled_from(["pkcs1-sha256", "pkcs1-sha384", "pss-sha256"]),
)
def test_rsa_verify_agrees_with_cryptography(
    rsa_pair: tuple[rsa.RSAPrivateKey, Any],
    message: bytes,
    flip: tuple[int, int] | None,
    scheme: str,
) -> None:
    """The recover-and-compare RS256 check gives key.verify's verdict on good and bad input."""
    private, public = rsa_pair
    pad: Any = padding.PKCS1v15()
    if scheme == "pss-sha256":
        pad = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH)
    digest = hashes.SHA384() if scheme == "pkcs1-sha384" else hashes.SHA256()
    signature = bytearray(private.sign(message, pad, digest))
    if flip is not None:
        signature[flip[0]] ^= flip[1]
    try:
        private.public_key().verify(bytes(signature), message, padding.PKCS1v15(), hashes.SHA256())
        expected = True
    except InvalidSignature:
        expected = False
    assert public.verify(bytes(signature), message) is expected
    assert expected == (flip is None and scheme == "pkcs1-sha256")
