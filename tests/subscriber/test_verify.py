"""The token-verification hot path: each RFC 8725 hardening rule and each reason code.

Tokens are minted here with ``cryptography`` (PyJWT only as an independent cross-check), time
is injected, and every refusal is checked by its machine-readable ``reason``.
"""

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from subscriber import verify as verify_module
from subscriber.errors import (
    TOKEN_REASONS,
    BadSignature,
    InvalidClaims,
    InvalidToken,
    KeyNotFound,
    KeyNotUsable,
    MalformedToken,
)
from subscriber.jwk import SUPPORTED_ALGS, PublicKey, load_public_jwk
from subscriber.jws import URLSAFE_TO_STD, b64url_encode
from subscriber.verify import VerifyOptions, check_claims, verify_signature, verify_token

ISSUER = "https://id.example.com"
AUDIENCE = "orders-api"
NOW = 1_700_000_000.0
OPTIONS = VerifyOptions(issuer=ISSUER, audience=AUDIENCE)


def _b64json(obj: Any) -> str:
    return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


class Signer:
    """A private key with its production :class:`PublicKey`, minting compact JWS tokens."""

    def __init__(self, alg: str, kid: str) -> None:
        self.alg, self.kid = alg, kid
        if alg == "RS256":
            self.private: Any = rsa.generate_private_key(65537, 2048)
            nums = self.private.public_key().public_numbers()
            jwk = {
                "kty": "RSA",
                "n": b64url_encode(nums.n.to_bytes(256, "big")),
                "e": b64url_encode(nums.e.to_bytes(3, "big")),
            }
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            nums = self.private.public_key().public_numbers()
            jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url_encode(nums.x.to_bytes(32, "big")),
                "y": b64url_encode(nums.y.to_bytes(32, "big")),
            }
        else:
            self.private = Ed25519PrivateKey.generate()
            raw = self.private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
        self.public = load_public_jwk({**jwk, "kid": kid, "alg": alg, "use": "sig"})

    def sign(self, signing_input: bytes) -> bytes:
        if self.alg == "RS256":
            return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[no-any-return]
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.private.sign(signing_input)  # type: ignore[no-any-return]

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        header: dict[str, Any] | None = None,
        header_segment: str | None = None,
        payload_segment: str | None = None,
        drop: tuple[str, ...] = (),
        **extra: Any,
    ) -> str:
        """A signed token: valid claims by default, ``extra`` claims merged, ``drop`` removed."""
        if header_segment is None:
            h = {"alg": self.alg, "kid": self.kid} if header is None else header
            header_segment = _b64json(h)
        if payload_segment is None:
            c = valid_claims() if claims is None else claims
            c = {k: v for k, v in {**c, **extra}.items() if k not in drop}
            payload_segment = _b64json(c)
        signing_input = f"{header_segment}.{payload_segment}"
        return f"{signing_input}.{b64url_encode(self.sign(signing_input.encode()))}"


def valid_claims() -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 300,
    }


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: Signer(alg, f"kid-{alg.lower()}") for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture(scope="module")
def es(signers: dict[str, Signer]) -> Signer:
    return signers["ES256"]


def keys_of(*signers: Signer) -> dict[str, PublicKey]:
    return {s.kid: s.public for s in signers}


def refused(token: str, keys: dict[str, PublicKey], **kw: Any) -> InvalidToken:
    options = kw.pop("options", OPTIONS)
    now = kw.pop("now", NOW)
    with pytest.raises(InvalidToken) as info:
        verify_token(token, keys, options, now, **kw)
    assert info.value.reason in TOKEN_REASONS
    return info.value


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_returns_its_claims(signers: dict[str, Signer], alg: str) -> None:
    signer = signers[alg]
    claims = verify_token(signer.token(), keys_of(*signers.values()), OPTIONS, NOW)
    assert claims == valid_claims()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_pyjwt_minted_tokens_verify(signers: dict[str, Signer], alg: str) -> None:
    signer = signers[alg]
    token = jwt.encode(valid_claims(), signer.private, algorithm=alg, headers={"kid": signer.kid})
    assert verify_token(token, keys_of(signer), OPTIONS, NOW)["sub"] == "user-1"


def test_signature_stage_alone_returns_header_and_raw_payload(es: Signer) -> None:
    token = es.token(payload_segment=b64url_encode(b"not json at all"))
    header, payload = verify_signature(token, keys_of(es), OPTIONS)
    assert payload == b"not json at all"
    assert header["kid"] == es.kid
    with pytest.raises(TypeError):
        header["kid"] = "other"  # type: ignore[index]


def test_audience_may_be_a_list_and_options_may_accept_several(es: Signer) -> None:
    token = es.token(aud=["billing", AUDIENCE])
    assert verify_token(token, keys_of(es), OPTIONS, NOW)["aud"] == ["billing", AUDIENCE]
    several = VerifyOptions(issuer=ISSUER, audience=frozenset({"billing", "search"}))
    assert verify_token(token, keys_of(es), several, NOW)["sub"] == "user-1"


# --- size and shape, before any decoding -------------------------------------------------------


def test_oversized_token_is_refused_before_decoding(es: Signer) -> None:
    garbage = "!" * (OPTIONS.max_token_bytes + 1)  # not base64: decoding would say malformed
    err = refused(garbage, keys_of(es))
    assert isinstance(err, MalformedToken) and err.reason == "token_too_large"
    token = es.token(pad="x" * 200)
    small = replace(OPTIONS, max_token_bytes=len(token) - 1)
    assert refused(token, keys_of(es), options=small).reason == "token_too_large"
    assert verify_token(token, keys_of(es), replace(small, max_token_bytes=len(token)), NOW)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda t: "", "malformed"),
        (lambda t: t.rsplit(".", 1)[0], "malformed"),
        (lambda t: t + ".", "malformed"),
        (lambda t: t + ".AAAA", "malformed"),
        (lambda t: t + ".AAAA.AAAA", "unsupported_serialization"),
        (lambda t: "é" + t, "malformed"),
        (
            lambda t: json.dumps(
                {"payload": t.split(".")[1], "protected": t.split(".")[0], "signature": "AA"}
            ),
            "unsupported_serialization",
        ),
    ],
    ids=["empty", "two-segments", "four-empty", "four", "five-jwe", "non-ascii", "json-serial"],
)
def test_only_compact_three_segment_jws_is_accepted(
    es: Signer, make: Callable[[str], str], reason: str
) -> None:
    err = refused(make(es.token()), keys_of(es))
    assert isinstance(err, MalformedToken) and err.reason == reason


@pytest.mark.parametrize(
    "serialized",
    [
        '{"payload":"e30","protected":"eyJhbGciOiJFUzI1NiJ9","signature":"AA"}',
        ' {"payload":"e30","signatures":[{"protected":"e30.x","signature":"A.A"}]}',
    ],
)
def test_json_serialization_is_refused_whatever_its_dots(serialized: str) -> None:
    assert refused(serialized, {}).reason == "unsupported_serialization"


def test_token_must_be_a_string(es: Signer) -> None:
    assert refused(es.token().encode(), keys_of(es)).reason == "malformed"  # type: ignore[arg-type]


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize(
    "spoil",
    [
        lambda s: s + "=",  # padding
        lambda s: s.replace("-", "+").replace("_", "/") + "+/",  # standard alphabet
        lambda s: s[:4] + " " + s[4:],  # whitespace
        lambda s: s + "A" * ((1 - len(s)) % 4),  # a length no encoding has
    ],
    ids=["padding", "std-alphabet", "space", "length"],
)
def test_non_canonical_base64url_is_malformed(
    es: Signer, part: int, spoil: Callable[[str], str]
) -> None:
    segments = es.token().split(".")
    segments[part] = spoil(segments[part])
    assert refused(".".join(segments), keys_of(es)).reason in {"malformed"}


def test_trailing_bits_make_a_second_spelling_that_is_refused(es: Signer) -> None:
    # "e30" is '{}'; a 43-char segment has 2 spare bits: flipping them decodes to the same
    # bytes under a lenient decoder. Take the signature (64 bytes -> 86 chars, 4 spare bits).
    header, payload, sig = es.token().split(".")
    assert len(sig) % 4 == 2
    index = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(sig[-1])
    twin = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[index | 1]
    assert twin != sig[-1]
    err = refused(f"{header}.{payload}.{sig[:-1]}{twin}", keys_of(es))
    assert err.reason == "malformed"


# --- the header --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        (b64url_encode(b'{"alg":"ES256","kid":"kid-es256","kid":"other"}'), "malformed"),
        (b64url_encode(b'["ES256"]'), "malformed"),
        (b64url_encode(b'{"alg":"ES256","kid":"kid-es256","x":NaN}'), "malformed"),
        (b64url_encode(b"\xff\xfe"), "malformed"),
        (_b64json({"kid": "kid-es256"}), "malformed"),
        (_b64json({"alg": 256, "kid": "kid-es256"}), "malformed"),
        (_b64json({"alg": "ES256"}), "missing_kid"),
        (_b64json({"alg": "ES256", "kid": None}), "missing_kid"),
        (_b64json({"alg": "ES256", "kid": ""}), "missing_kid"),
        (_b64json({"alg": "ES256", "kid": 7}), "malformed"),
        (_b64json({"alg": "ES256", "kid": ["kid-es256"]}), "malformed"),
        (_b64json({"alg": "ES256", "kid": "k" * 129}), "malformed"),
        (_b64json({"alg": "ES256", "kid": "kid-es256", "typ": 1}), "malformed"),
    ],
    ids=[
        "duplicate-name",
        "not-object",
        "nan",
        "not-utf8",
        "no-alg",
        "alg-not-string",
        "no-kid",
        "null-kid",
        "empty-kid",
        "int-kid",
        "list-kid",
        "long-kid",
        "typ-not-string",
    ],
)
def test_bad_headers_are_refused(es: Signer, segment: str, reason: str) -> None:
    err = refused(es.token(header_segment=segment), keys_of(es))
    assert err.reason == reason
    assert isinstance(err, KeyNotFound if reason == "missing_kid" else MalformedToken)


def test_kid_is_looked_up_exactly(es: Signer) -> None:
    for kid in (es.kid.upper(), es.kid + " ", " " + es.kid, es.kid[:-1], "k" * 128):
        token = es.token(header={"alg": "ES256", "kid": kid})
        err = refused(token, keys_of(es))
        assert isinstance(err, KeyNotFound) and err.reason == "unknown_kid"


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "zip"])
def test_key_bearing_headers_are_forbidden(es: Signer, name: str) -> None:
    value = {"jwk": dict(es.public.jwk), "x5c": ["MIIB"], "zip": "DEF"}.get(name, "https://x")
    token = es.token(header={"alg": "ES256", "kid": es.kid, name: value})
    err = refused(token, keys_of(es))
    assert isinstance(err, MalformedToken) and err.reason == "forbidden_header"


@pytest.mark.parametrize("crit", [["exp"], [], ["b64"]])
def test_any_crit_is_refused(es: Signer, crit: list[str]) -> None:
    token = es.token(header={"alg": "ES256", "kid": es.kid, "crit": crit, "exp": 1})
    assert refused(token, keys_of(es)).reason == "unsupported_crit"


def test_unencoded_payload_is_refused_and_b64_true_is_harmless(es: Signer) -> None:
    token = es.token(header={"alg": "ES256", "kid": es.kid, "b64": False})
    assert refused(token, keys_of(es)).reason == "forbidden_header"
    token = es.token(header={"alg": "ES256", "kid": es.kid, "b64": "false"})
    assert refused(token, keys_of(es)).reason == "forbidden_header"
    token = es.token(header={"alg": "ES256", "kid": es.kid, "b64": True})
    assert verify_token(token, keys_of(es), OPTIONS, NOW)


# --- the algorithm comes from the key ----------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "ES521", "RS1", "es256", ""])
def test_algorithms_outside_the_allowed_set_are_refused(es: Signer, alg: str) -> None:
    header_segment = _b64json({"alg": alg, "kid": es.kid})
    payload_segment = _b64json(valid_claims())
    for signature in ("", b64url_encode(b"\x00" * 32)):
        token = f"{header_segment}.{payload_segment}.{signature}"
        err = refused(token, keys_of(es))
        assert isinstance(err, BadSignature) and err.reason == "alg_not_allowed"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "PS256", "ES384", "ES512", "EdDSA"])
def test_a_supported_algorithm_that_is_not_the_keys_is_refused(es: Signer, alg: str) -> None:
    token = f"{_b64json({'alg': alg, 'kid': es.kid})}.{_b64json(valid_claims())}.AAAA"
    err = refused(token, keys_of(es))
    assert isinstance(err, BadSignature) and err.reason == "alg_mismatch"
    narrow = VerifyOptions(issuer=ISSUER, audience=AUDIENCE, algorithms={"ES256"})
    with pytest.raises(BadSignature) as info:
        verify_token(token, keys_of(es), narrow, NOW)
    assert info.value.reason == "alg_not_allowed"


def test_hmac_with_the_public_key_as_secret_is_refused(signers: dict[str, Signer]) -> None:
    rs = signers["RS256"]
    pem = rs.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac

    header_segment = _b64json({"alg": "HS256", "kid": rs.kid})
    signing_input = f"{header_segment}.{_b64json(valid_claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    err = refused(f"{signing_input}.{b64url_encode(mac)}", keys_of(rs))
    assert err.reason == "alg_not_allowed"


def test_header_alg_must_equal_the_keys_alg(signers: dict[str, Signer]) -> None:
    rs, es = signers["RS256"], signers["ES256"]
    # An ES256 signature presented under the RSA key's kid, and vice versa.
    token = es.token(header={"alg": "ES256", "kid": rs.kid})
    err = refused(token, keys_of(rs, es))
    assert isinstance(err, BadSignature) and err.reason == "alg_mismatch"
    token = rs.token(header={"alg": "RS256", "kid": es.kid})
    assert refused(token, keys_of(rs, es)).reason == "alg_mismatch"


def test_options_can_narrow_the_algorithms(signers: dict[str, Signer]) -> None:
    only_ed = replace(OPTIONS, algorithms=frozenset({"EdDSA"}))
    keys = keys_of(*signers.values())
    assert refused(signers["RS256"].token(), keys, options=only_ed).reason == "alg_not_allowed"
    assert verify_token(signers["EdDSA"].token(), keys, only_ed, NOW)


# --- keys held, gone, and signatures -----------------------------------------------------------


def test_unknown_kid(es: Signer, signers: dict[str, Signer]) -> None:
    err = refused(es.token(), keys_of(signers["RS256"]))
    assert isinstance(err, KeyNotFound) and err.reason == "unknown_kid"
    assert refused(es.token(), {}).reason == "unknown_kid"


@pytest.mark.parametrize("reason", ["revoked_key", "retired_key"])
def test_gone_keys_never_verify_even_if_still_held(es: Signer, reason: str) -> None:
    err = refused(es.token(), keys_of(es), gone={es.kid: reason})
    assert isinstance(err, KeyNotUsable) and err.reason == reason
    assert refused(es.token(), {}, gone={es.kid: reason}).reason == reason
    # An unexpected reason string still refuses, under a reason from the closed set.
    assert refused(es.token(), keys_of(es), gone={es.kid: "weird"}).reason == "revoked_key"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_signature_by_another_key_under_the_same_kid_is_bad(
    signers: dict[str, Signer], alg: str
) -> None:
    impostor = Signer(alg, signers[alg].kid) if alg != "RS256" else None
    if impostor is None:  # RSA keygen is slow; reuse a fresh signer only for the cheap curves
        impostor = Signer("RS256", signers[alg].kid)
    err = refused(impostor.token(), keys_of(signers[alg]))
    assert isinstance(err, BadSignature) and err.reason == "bad_signature"


def test_modified_payload_or_signature_is_bad(es: Signer) -> None:
    header, payload, signature = es.token().split(".")
    other_payload = _b64json({**valid_claims(), "sub": "admin"})
    assert refused(f"{header}.{other_payload}.{signature}", keys_of(es)).reason == "bad_signature"
    assert refused(f"{header}.{payload}.", keys_of(es)).reason == "bad_signature"
    der = es.private.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    err = refused(f"{header}.{payload}.{b64url_encode(der)}", keys_of(es))
    assert err.reason == "bad_signature"  # DER is not the JWS r||s form


# --- the payload and the claims ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"iss":"https://id.example.com","iss":"https://evil.example.com"}',
        b'["not", "an", "object"]',
        b'"string"',
        b"not json",
        b'{"exp": NaN}',
        b'{"exp": Infinity}',
        b"\xff",
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["duplicate", "array", "string", "garbage", "nan", "infinity", "not-utf8", "deep"],
)
def test_signed_but_malformed_payloads_are_refused(es: Signer, payload: bytes) -> None:
    token = es.token(payload_segment=b64url_encode(payload))
    err = refused(token, keys_of(es), options=replace(OPTIONS, max_token_bytes=20_000))
    assert isinstance(err, MalformedToken) and err.reason == "malformed"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"drop": ("exp",)}, "missing_claim"),
        ({"exp": None}, "invalid_claim"),
        ({"exp": str(int(NOW) + 300)}, "invalid_claim"),
        ({"exp": True}, "invalid_claim"),
        ({"exp": [int(NOW) + 300]}, "invalid_claim"),
        ({"nbf": "0"}, "invalid_claim"),
        ({"iat": False}, "invalid_claim"),
        ({"drop": ("iss",)}, "missing_claim"),
        ({"iss": "https://id.example.com/"}, "wrong_issuer"),
        ({"iss": "HTTPS://ID.EXAMPLE.COM"}, "wrong_issuer"),
        ({"iss": ["https://id.example.com"]}, "wrong_issuer"),
        ({"drop": ("aud",)}, "missing_claim"),
        ({"aud": "orders-api-2"}, "wrong_audience"),
        ({"aud": ["billing", "search"]}, "wrong_audience"),
        ({"aud": []}, "invalid_claim"),
        ({"aud": [AUDIENCE, 7]}, "invalid_claim"),
        ({"aud": {"orders-api": True}}, "invalid_claim"),
    ],
)
def test_claim_checks(es: Signer, change: dict[str, Any], reason: str) -> None:
    err = refused(es.token(**change), keys_of(es))
    assert isinstance(err, InvalidClaims) and err.reason == reason


def test_infinite_exp_is_not_a_token_that_never_expires(es: Signer) -> None:
    claims = json.dumps(valid_claims()).replace(str(int(NOW) + 300), "1e400").encode()
    err = refused(es.token(payload_segment=b64url_encode(claims)), keys_of(es))
    assert err.reason == "invalid_claim"


def test_huge_integer_times_do_not_crash(es: Signer) -> None:
    keys = keys_of(es)
    assert verify_token(es.token(exp=10**400), keys, OPTIONS, NOW)["exp"] == 10**400
    assert refused(es.token(exp=-(10**400)), keys).reason == "expired"
    assert refused(es.token(nbf=10**400), keys).reason == "not_yet_valid"
    assert refused(es.token(iat=10**400), keys).reason == "issued_in_future"
    assert verify_token(es.token(nbf=-(10**400), iat=-(10**400)), keys, OPTIONS, NOW)


def test_time_claims_honour_the_leeway(es: Signer) -> None:
    leeway = OPTIONS.leeway_s
    exp = int(NOW) + 300
    keys = keys_of(es)
    token = es.token(exp=exp)
    assert verify_token(token, keys, OPTIONS, exp + leeway - 0.001)
    assert refused(token, keys, now=exp + leeway).reason == "expired"
    assert refused(token, keys, now=exp + leeway, options=replace(OPTIONS, leeway_s=0)).reason
    token = es.token(nbf=NOW + leeway + 1)
    assert refused(token, keys).reason == "not_yet_valid"
    assert verify_token(es.token(nbf=NOW + leeway), keys, OPTIONS, NOW)
    token = es.token(iat=NOW + leeway + 1)
    assert refused(token, keys).reason == "issued_in_future"
    assert verify_token(es.token(iat=NOW + leeway), keys, OPTIONS, NOW)
    assert verify_token(es.token(exp=float(exp) + 0.5), keys, OPTIONS, NOW)


def test_check_claims_alone() -> None:
    check_claims(valid_claims(), OPTIONS, NOW)
    with pytest.raises(InvalidClaims) as info:
        check_claims(valid_claims(), OPTIONS, NOW + 10_000)
    assert info.value.reason == "expired"


@pytest.mark.parametrize(
    ("typ", "accepted"),
    [
        ("at+jwt", True),
        ("AT+JWT", True),
        ("application/at+jwt", True),
        ("Application/At+Jwt", True),
        ("jwt", False),
        ("application/jwt", False),
        ("at+jwt ", False),
        ("text/at+jwt", False),
        (None, False),
    ],
)
def test_required_typ(es: Signer, typ: str | None, accepted: bool) -> None:
    header = {"alg": "ES256", "kid": es.kid} | ({} if typ is None else {"typ": typ})
    token = es.token(header=header)
    at_jwt = replace(OPTIONS, typ="at+jwt")
    if accepted:
        assert verify_token(token, keys_of(es), at_jwt, NOW)
    else:
        assert refused(token, keys_of(es), options=at_jwt).reason == "wrong_typ"
    assert verify_token(token, keys_of(es), OPTIONS, NOW)  # no typ required: any is fine


# --- order: cheap failures never cost a signature, the payload is not read before it ------------


def counting(key: PublicKey) -> tuple[PublicKey, list[int]]:
    calls: list[int] = []

    def verify(signature: bytes, signing_input: bytes) -> bool:
        calls.append(1)
        return key.verify(signature, signing_input)

    return replace(key, verify=verify), calls


def test_cheap_failures_never_reach_the_signature(es: Signer) -> None:
    key, calls = counting(es.public)
    keys = {es.kid: key}
    good = es.token()
    header, payload, signature = good.split(".")
    cheap = [
        (good + "x" * OPTIONS.max_token_bytes, {}),
        (good + ".", {}),
        (es.token(header={"alg": "ES256", "kid": es.kid, "jku": "https://x"}), {}),
        (es.token(header={"alg": "ES256", "kid": es.kid, "crit": ["x"]}), {}),
        (es.token(header={"alg": "ES256", "kid": es.kid, "typ": "jwt"}), {"typ": "at+jwt"}),
        (es.token(header={"alg": "none", "kid": es.kid}), {}),
        (es.token(header={"alg": "RS256", "kid": es.kid}), {}),
        (es.token(header={"alg": "ES256", "kid": "nope"}), {}),
        (f"{header}.{payload}=.{signature}", {}),
        (f"{header}.{payload}.{signature}=", {}),
    ]
    for token, option_changes in cheap:
        refused(token, keys, options=replace(OPTIONS, **option_changes))
    refused(good, keys, gone={es.kid: "revoked_key"})
    assert calls == []
    verify_token(good, keys, OPTIONS, NOW)
    assert calls == [1]


def test_nothing_in_the_payload_is_read_before_the_signature_verifies(es: Signer) -> None:
    header, _, signature = es.token().split(".")
    for payload in (b"not json", b'{"a":1,"a":2}', json.dumps({"exp": 0}).encode()):
        token = f"{header}.{b64url_encode(payload)}.{signature}"
        assert refused(token, keys_of(es)).reason == "bad_signature"


# --- the header cache --------------------------------------------------------------------------


def _cache_key(header_segment: str) -> bytes:
    # The hot path holds segments in the standard base64 alphabet (one translate per token).
    return header_segment.encode().translate(URLSAFE_TO_STD)


def test_header_cache_never_bypasses_per_token_checks(es: Signer) -> None:
    token = es.token(header={"alg": "ES256", "kid": es.kid, "typ": "at+jwt"})
    assert verify_token(token, keys_of(es), OPTIONS, NOW)  # header now cached
    assert _cache_key(token.split(".")[0]) in verify_module._header_cache
    assert refused(token, {}).reason == "unknown_kid"
    assert refused(token, keys_of(es), gone={es.kid: "retired_key"}).reason == "retired_key"
    assert refused(token, keys_of(es), options=replace(OPTIONS, typ="jwt")).reason == "wrong_typ"
    only_rs = replace(OPTIONS, algorithms=frozenset({"RS256"}))
    assert refused(token, keys_of(es), options=only_rs).reason == "alg_not_allowed"


def test_header_cache_holds_only_valid_headers_and_is_bounded(es: Signer) -> None:
    bad = es.token(header={"alg": "ES256", "kid": es.kid, "jwk": {}})
    for _ in range(2):
        assert refused(bad, keys_of(es)).reason == "forbidden_header"
    assert _cache_key(bad.split(".")[0]) not in verify_module._header_cache
    payload, signature = "e30", b64url_encode(b"\x00" * 64)
    for i in range(3 * verify_module._HEADER_CACHE_MAX):
        header = _b64json({"alg": "ES256", "kid": f"flood-{i}"})
        refused(f"{header}.{payload}.{signature}", keys_of(es))
    assert 0 < len(verify_module._header_cache) <= verify_module._HEADER_CACHE_MAX
    huge = _b64json({"alg": "ES256", "kid": es.kid, "pad": "x" * 1000})
    es_token = es.token(header_segment=huge)
    assert verify_token(es_token, keys_of(es), OPTIONS, NOW)
    assert _cache_key(huge) not in verify_module._header_cache


def test_header_cache_is_safe_across_threads_while_a_flood_clears_it(
    signers: dict[str, Signer],
) -> None:
    import threading

    keys = keys_of(*signers.values())
    tokens = [s.token() for s in signers.values()]
    failures: list[BaseException] = []
    flooded = [0]
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            header = _b64json({"alg": "EdDSA", "kid": f"flood-{flooded[0]}"})
            with pytest.raises(InvalidToken):
                verify_token(f"{header}.e30.AA", keys, OPTIONS, NOW)
            flooded[0] += 1

    def verify_all() -> None:
        try:
            # Keep verifying until the flood has cleared the cache several times over.
            while flooded[0] < 4 * verify_module._HEADER_CACHE_MAX:
                for token in tokens:
                    assert verify_token(token, keys, OPTIONS, NOW)["sub"] == "user-1"
        except BaseException as e:  # reported below, with the thread's failure
            failures.append(e)

    flooder = threading.Thread(target=flood)
    flooder.start()
    workers = [threading.Thread(target=verify_all) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    stop.set()
    flooder.join()
    assert failures == []
    assert len(verify_module._header_cache) <= verify_module._HEADER_CACHE_MAX


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"issuer": ""}, "issuer"),
        ({"issuer": None}, "issuer"),
        ({"audience": ""}, "audience"),
        ({"audience": frozenset()}, "audience"),
        ({"audience": frozenset({"a", 1})}, "audience"),
        ({"audience": 7}, "audience"),
        ({"algorithms": "RS256"}, "algorithms"),
        ({"algorithms": frozenset()}, "algorithms"),
        ({"algorithms": frozenset({"RS256", "HS256"})}, "HS256"),
        ({"algorithms": frozenset({"none"})}, "none"),
        ({"leeway_s": -1}, "-1"),
        ({"leeway_s": float("nan")}, "nan"),
        ({"leeway_s": True}, "True"),
        ({"leeway_s": 3600}, "3600"),
        ({"typ": ""}, "typ"),
        ({"max_token_bytes": 0}, "max_token_bytes"),
        ({"max_token_bytes": True}, "max_token_bytes"),
        ({"max_token_bytes": 1 << 30}, str(1 << 30)),
    ],
)
def test_options_refuse_bad_values_naming_them(changes: dict[str, Any], named: str) -> None:
    base: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE}
    with pytest.raises(ValueError, match=named):
        VerifyOptions(**(base | changes))


def test_options_normalise_collections_and_stay_hashable() -> None:
    options = VerifyOptions(
        issuer=ISSUER,
        audience=["a", "b"],  # type: ignore[arg-type]
        algorithms=["ES256"],  # type: ignore[arg-type]
    )
    assert options.audience == frozenset({"a", "b"})
    assert options.algorithms == frozenset({"ES256"})
    assert hash(options) == hash(replace(options))
    assert OPTIONS.algorithms == frozenset(SUPPORTED_ALGS) and len(SUPPORTED_ALGS) == 10
    assert OPTIONS.leeway_s == 30.0 and OPTIONS.max_token_bytes == 8192


def test_every_reason_the_verifier_can_raise_is_in_the_closed_set() -> None:
    """A typo in a reason string would create an unbounded metrics label; catch it here."""
    import inspect
    import re

    from subscriber import jws

    source = inspect.getsource(verify_module) + inspect.getsource(jws)
    raised = set(re.findall(r'reason="([a-z_]+)"', source))
    assert raised and raised <= TOKEN_REASONS
    assert {"revoked_key", "retired_key"} <= TOKEN_REASONS  # from ``gone``
