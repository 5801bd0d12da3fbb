"""Providers' real key sets (tests/data/jwks-samples/) and the class of shapes they stand for."""

import base64
import datetime
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from issuer import keygen
from subscriber.errors import InvalidKey
from subscriber.provider_jwks import load_provider_jwks, rsa_alg_hint

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "jwks-samples"


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def advertised(name: str) -> Any:
    return sample(name)["id_token_signing_alg_values_supported"]


# file -> (discovery document or None, {kid prefix: alg} kept, [(kid prefix, reason)] left out)
EXPECTED: dict[str, tuple[str | None, dict[str, str], list[tuple[str, str]]]] = {
    "google-1": (
        "google-openid-configuration-1",
        {"87bbe08": "RS256", "0e345fd": "RS256", "f2e1198": "RS256"},
        [],
    ),
    "auth0-1": (
        "auth0-openid-configuration-1",
        {"tMQzail": "RS256", "NKxtg1G": "RS256"},
        [],
    ),
    "okta-1": ("okta-openid-configuration-1", {"ovKMh8c": "RS256", "MDma6zp": "RS256"}, []),
    "okta-2": ("okta-openid-configuration-2", {"2na0Pmx": "RS256", "8WyllAG": "RS256"}, []),
    "keycloak-1": (None, {"9cgFE7e": "RS256"}, [("dY_HoGK", "enc_key")]),
    "keycloak-3": (
        "keycloak-openid-configuration-1",
        {"kf46eDl": "RS256"},
        [("EWGWeiW", "enc_key")],
    ),
    "aws-cognito-1": (
        "aws-cognito-openid-configuration-1",
        {"vyVQH7U": "RS256", "fUyIG0h": "RS256"},
        [],
    ),
    "telekom-1": (None, {"1410858": "RS256", "831cd9a": "ES256"}, []),
    "yahoo-1": (
        None,
        {"3466d51": "ES256"},
        [("6ff94cd", "weak_key"), ("0", "weak_key"), ("4", "weak_key")],
    ),
    "battle-net-1": (
        None,
        {},
        [("13922a4", "bad_jwk"), ("4db0532", "bad_jwk"), ("4ccec58", "bad_jwk")],
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_provider_sets(name: str, caplog: pytest.LogCaptureFixture) -> None:
    discovery, kept, left_out = EXPECTED[name]
    hint = advertised(discovery) if discovery else None
    with caplog.at_level(logging.INFO, logger="subscriber.provider_jwks"):
        result = load_provider_jwks(sample(name), advertised_algs=hint)
    assert {kid[:7]: key.alg for kid, key in result.keys.items()} == kept
    assert [(s.kid[:7] if s.kid else None, s.reason) for s in result.skipped] == left_out
    # Every key of the document is either kept or left out with a logged reason.
    assert len(result.keys) + len(result.skipped) == len(sample(name)["keys"])
    for skip in result.skipped:
        assert any(skip.reason in r.getMessage() and r.kid == skip.kid for r in caplog.records)


def test_cognito_kids_are_opaque_strings() -> None:
    kids = set(load_provider_jwks(sample("aws-cognito-1")).keys)
    assert kids == {k["kid"] for k in sample("aws-cognito-1")["keys"]}
    assert any(c in kid for kid in kids for c in "+/=")


@pytest.mark.parametrize(
    ("keys", "discovery"),
    [
        ("microsoft-1", "microsoft-openid-configuration-1"),
        ("microsoft-2", "microsoft-openid-configuration-2"),
    ],
)
def test_entra_keys_without_alg_take_the_one_advertised_rsa_algorithm(
    keys: str, discovery: str
) -> None:
    """Entra publishes no alg; its discovery document advertises RS256 alone. Each key's x5c
    certificate is checked to hold the same key as n/e."""
    doc = sample(keys)
    result = load_provider_jwks(doc, advertised_algs=advertised(discovery))
    assert len(result.keys) == len(doc["keys"]) and not result.skipped
    assert {key.alg for key in result.keys.values()} == {"RS256"}
    # Without the discovery document nothing says which of six algorithms: left out, said why.
    bare = load_provider_jwks(doc)
    assert not bare.keys and {s.reason for s in bare.skipped} == {"missing_alg"}


def test_the_alg_hint_is_taken_only_when_unambiguous() -> None:
    assert rsa_alg_hint(["RS256"]) == "RS256"
    assert rsa_alg_hint(["RS256", "ES256", "HS256"]) == "RS256"  # one RSA algorithm
    assert rsa_alg_hint(advertised("auth0-openid-configuration-1")) is None  # RS256 and PS256
    assert rsa_alg_hint(advertised("keycloak-openid-configuration-1")) is None
    assert rsa_alg_hint(None) is None and rsa_alg_hint("RS256") is None and rsa_alg_hint([]) is None
    assert rsa_alg_hint(["ES256", "HS256"]) is None


# --- the class, not the file -------------------------------------------------------------------


def _certificate(private: Any) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


def test_one_bad_key_never_drops_the_set(caplog: pytest.LogCaptureFixture) -> None:
    good = keygen.generate("RS256")
    p384 = keygen.generate("ES384")
    other = rsa.generate_private_key(65537, 2048)
    x5c_ok = {**good.jwk, "x5c": [_certificate(good.private_key)]}
    weak = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    n_weak = base64.urlsafe_b64encode(weak.n.to_bytes(128, "big")).rstrip(b"=").decode()
    doc = {
        "keys": [
            {
                "kty": "RSA",
                "use": "enc",
                "alg": "RSA-OAEP-256",
                "kid": "enc-1",
                "n": "AQAB",
                "e": "AQAB",
            },
            {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES", "kid": "enc-2", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "weak", "alg": "RS256", "n": n_weak, "e": "AQAB"},
            {**keygen.generate("ES256").jwk, "kid": "twice"},
            {**keygen.generate("ES256").jwk, "kid": "twice"},
            {**good.jwk, "kid": "lying-x5c", "x5c": [_certificate(other)]},
            {**good.jwk, "kid": "bad-x5c", "x5c": ["not base64!"]},
            {**good.jwk, "kid": "private", "d": "AAAA"},
            "not an object",
            x5c_ok,
            p384.jwk,
        ]
    }
    with caplog.at_level(logging.INFO, logger="subscriber.provider_jwks"):
        result = load_provider_jwks(doc)
    assert set(result.keys) == {good.kid, p384.kid}
    assert [(s.kid, s.reason) for s in result.skipped] == [
        ("enc-1", "enc_key"),
        ("enc-2", "enc_key"),
        ("x25519", "unsupported_key"),
        ("hmac", "unsupported_key"),
        ("weak", "weak_key"),
        ("twice", "duplicate_kid"),
        ("twice", "duplicate_kid"),
        ("lying-x5c", "bad_jwk"),
        ("bad-x5c", "bad_jwk"),
        ("private", "private_key_material"),
        (None, "bad_jwk"),
    ]
    warned = {r.kid for r in caplog.records if r.levelno == logging.WARNING}
    assert warned == {"weak", "twice", "lying-x5c", "bad-x5c", "private", None}
    # Nothing secret in a log line: the refused private member's value is never echoed.
    assert all("AAAA" not in r.getMessage() for r in caplog.records)


def test_an_ec_key_in_x5c_is_checked_too() -> None:
    pair = keygen.generate("ES256")
    stranger = ec.generate_private_key(ec.SECP256R1())
    ok = load_provider_jwks({"keys": [{**pair.jwk, "x5c": [_certificate(pair.private_key)]}]})
    assert set(ok.keys) == {pair.kid}
    bad = load_provider_jwks({"keys": [{**pair.jwk, "x5c": [_certificate(stranger)]}]})
    assert not bad.keys and bad.skipped[0].reason == "bad_jwk"


@pytest.mark.parametrize("doc", [{}, {"keys": {}}, [], {"keys": "x"}])
def test_a_document_that_is_not_a_key_set_is_refused(doc: Any) -> None:
    with pytest.raises(InvalidKey) as info:
        load_provider_jwks(doc)
    assert info.value.reason == "bad_jwk"
