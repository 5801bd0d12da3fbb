"""Project Wycheproof vectors through the production code (data: tests/data/wycheproof/).

Every vector of ``json_web_signature_test.json`` and ``json_web_key_test.json`` runs through
:func:`subscriber.jwk.load_public_jwk` / :func:`subscriber.jwk.load_jwks` and
:func:`subscriber.verify.verify_signature`, exactly as a verifier would use them (the vectors
carry no ``iss``/``aud``/``exp``, so the claims stage is not involved).

- For algorithms keyherald supports (RS256/384/512, PS256/384/512, ES256/384/512, EdDSA) our
  verdict must equal the label.
- For keys it deliberately does not load (HS*, the non-JOSE ``ES521``, an RSA key that names
  no algorithm) every vector must be refused, valid ones included: we fail closed, and a valid
  vector must be refused as ``unsupported_key`` or ``missing_alg`` (its key does not load).
  Each such token is then tried again against a key we do support held under the kid it
  names (the same RSA or P-256 material loaded as RS256/ES256 when there is one, a fixed
  Ed25519 key otherwise): unless the token's ``alg`` is that key's, it must still be refused,
  valid ones as ``alg_not_allowed`` or ``alg_mismatch``. The token cannot pick the algorithm.

Upstream mislabels four HS256 vectors; they are overridden here (see the README beside the
data). The raw primitive files (ECDSA P-256/P-384/P-521 in P1363 form, Ed25519, RSA-2048
PKCS#1 v1.5 with SHA-256/384/512, RSA-PSS 2048 with SHA-256/384 and 4096 with SHA-512, each
with the salt length JWS fixes) run against :attr:`subscriber.jwk.PublicKey.verify`.
"""

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from subscriber.errors import InvalidKey, InvalidToken, MalformedToken
from subscriber.jwk import SUPPORTED_ALGS, PublicKey, load_jwks, load_public_jwk
from subscriber.jws import b64url_decode, b64url_encode, strict_json_object
from subscriber.verify import VerifyOptions, verify_signature

DATA = Path(__file__).resolve().parent.parent / "data" / "wycheproof"
OPTIONS = VerifyOptions(issuer="https://wycheproof.invalid", audience="wycheproof")
#: tcId -> corrected label (upstream mislabels; see tests/data/wycheproof/README.md).
OVERRIDES = {367: "valid", 370: "valid", 372: "invalid", 373: "invalid"}
#: tcId -> our reason, where we are stricter than the label by design: RFC 7520 Figure 20 signs
#: PS384 with a key whose JWK says ``alg: PS256``. The algorithm comes from the key (RFC 8725
#: 3.1), so the token is refused; with the key labelled PS384 it verifies (checked below).
STRICTER = {346: "alg_mismatch", 350: "alg_mismatch"}
FAIL_CLOSED = {"unsupported_key", "missing_alg", "alg_not_allowed"}
_BY_CURVE = {
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
    ("OKP", "Ed25519"): "EdDSA",
}


def _load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())  # type: ignore[no-any-return]


def _supported(jwk: dict[str, Any]) -> bool:
    """Whether the key is one keyherald loads: a JOSE algorithm that fits its type."""
    if jwk.get("kty") == "RSA" and "crv" not in jwk:
        return jwk.get("alg") in SUPPORTED_ALGS and jwk["alg"][:2] in ("RS", "PS")
    fixed = _BY_CURVE.get((jwk.get("kty"), jwk.get("crv")))
    return fixed is not None and jwk.get("alg", fixed) == fixed


def _header(token: str) -> dict[str, Any]:
    try:
        return strict_json_object(b64url_decode(token.split(".")[0]))
    except MalformedToken:
        return {}


# A fixed Ed25519 key (seed 0..31) to stand in for keys we cannot load.
_STAND_IN_X = b64url_encode(
    Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    .public_key()
    .public_bytes(Encoding.Raw, PublicFormat.Raw)
)


def _stand_in(jwk: dict[str, Any], token: str) -> PublicKey | None:
    """A key we support, under the kid the token names, for a vector whose key we refuse.

    The same key material as the vector's key when it is RSA or P-256 (a key labelled PS256
    loaded as RS256, say), otherwise a fixed Ed25519 key. Either way the token cannot make it
    verify unless the token's alg is that key's alg.
    """
    members = {"RSA": ("kty", "n", "e", "kid"), "EC": ("kty", "crv", "x", "y", "kid")}
    names = members.get(jwk.get("kty", ""), ())
    if names and all(n in jwk for n in names):
        try:
            return load_public_jwk({n: jwk[n] for n in names}, default_alg="RS256")
        except InvalidKey:
            pass
    kid = _header(token).get("kid")
    if not isinstance(kid, str) or not kid:
        return None
    return load_public_jwk({"kty": "OKP", "crv": "Ed25519", "x": _STAND_IN_X, "kid": kid})


def _verdict(keys: dict[str, PublicKey], token: str) -> str:
    try:
        verify_signature(token, keys, OPTIONS)
    except InvalidToken as e:
        return e.reason
    return "valid"


@dataclass(frozen=True)
class Case:
    tc_id: int
    comment: str
    token: str
    expected: str  # "valid" or "invalid", after OVERRIDES
    keys: tuple[dict[str, Any], ...]
    supported: bool

    @property
    def id(self) -> str:
        return f"{self.tc_id}-{self.comment}"


def _cases(name: str, key_set: bool) -> list[Case]:
    cases = []
    overrides = {} if key_set else OVERRIDES
    for group in _load(name)["testGroups"]:
        material = group.get("public") or group.get("private")
        jwks = tuple(material["keys"]) if key_set else (material,)
        for test in group["tests"]:
            jws = test["jws"]
            cases.append(
                Case(
                    tc_id=test["tcId"],
                    comment=test["comment"],
                    token=jws if isinstance(jws, str) else json.dumps(jws),
                    expected=overrides.get(test["tcId"], test["result"]),
                    keys=jwks,
                    supported=all(_supported(k) for k in jwks),
                )
            )
    return cases


JWS_CASES = _cases("json_web_signature_test.json", key_set=False)
JWK_CASES = _cases("json_web_key_test.json", key_set=True)


def _jws_verdict(case: Case) -> str:
    try:
        key = load_public_jwk(case.keys[0])
    except InvalidKey as e:
        return e.reason
    return _verdict({key.kid: key}, case.token)


@pytest.mark.parametrize("case", JWS_CASES, ids=lambda c: c.id)
def test_json_web_signature_vector(case: Case) -> None:
    verdict = _jws_verdict(case)
    if case.tc_id in STRICTER:
        assert verdict == STRICTER[case.tc_id]
        relabelled = {**case.keys[0], "alg": _header(case.token)["alg"]}
        assert _verdict({case.keys[0]["kid"]: load_public_jwk(relabelled)}, case.token) == "valid"
        return
    if case.supported:
        assert (verdict == "valid") == (case.expected == "valid"), verdict
        return
    assert verdict != "valid"
    if case.expected == "valid":
        assert verdict in FAIL_CLOSED
    stand_in = _stand_in(case.keys[0], case.token)
    if stand_in is not None and _header(case.token).get("alg") != stand_in.alg:
        refusal = _verdict({stand_in.kid: stand_in}, case.token)
        assert refusal != "valid"
        if case.expected == "valid":
            assert refusal in {"alg_not_allowed", "alg_mismatch"}


@pytest.mark.parametrize("tc_id", [345, 346, 347])
def test_rfc7520_figures_verify_with_the_key_labelled_as_the_token_says(tc_id: int) -> None:
    """RFC 7520 Figures 13 (RS256), 20 (PS384) and 27 (ES512), as Wycheproof carries them.

    Figures 20 and 27 come with a key labelled otherwise (PS256; the non-JOSE "ES521"), which
    we refuse; labelled with the token's own algorithm, the key verifies the RFC's signature.
    """
    (case,) = [c for c in JWS_CASES if c.tc_id == tc_id]
    relabelled = {**case.keys[0], "alg": _header(case.token)["alg"]}
    assert _verdict({case.keys[0]["kid"]: load_public_jwk(relabelled)}, case.token) == "valid"
    assert _verdict({case.keys[0]["kid"]: load_public_jwk(relabelled)}, case.token[:-2]) != "valid"


def test_json_web_signature_classification() -> None:
    """All 401 vectors are classified; the counts are what the report quotes."""
    tally = Counter(
        (
            "stricter" if c.tc_id in STRICTER else "supported" if c.supported else "unsupported",
            c.expected,
            "accepted" if _jws_verdict(c) == "valid" else "refused",
        )
        for c in JWS_CASES
    )
    assert sum(tally.values()) == 401 == len({c.tc_id for c in JWS_CASES})
    assert tally == {
        ("supported", "valid", "accepted"): 32,
        ("supported", "invalid", "refused"): 323,
        ("stricter", "valid", "refused"): 2,
        # HS256 (10) and the non-JOSE "ES521" (2): keys we refuse to load.
        ("unsupported", "valid", "refused"): 12,
        # HS256 (30) and two RSA keys that name no algorithm.
        ("unsupported", "invalid", "refused"): 32,
    }


#: Why each JWK-file vector is refused: the right reason, not merely some refusal.
JWK_REASONS = {
    1: "unsupported_key",  # mixed symmetric + EC set
    2: "unsupported_key",  # valid HS256: fail closed
    3: "unsupported_key",
    4: "unsupported_key",  # duplicate kid (HS keys; duplicate_kid covered in test_jwk)
    5: "valid",
    6: "unsupported_key",  # alg RSA1_5
    7: "weak_key",  # ROCA
    8: "weak_key",  # 1024-bit
    9: "weak_key",  # e = 1
    10: "unsupported_key",
    11: "unsupported_key",
    12: "unsupported_key",
    13: "unsupported_key",  # valid HS256: fail closed
    14: "unsupported_key",  # valid HS384: fail closed
    15: "unsupported_key",  # valid HS512: fail closed
    16: "unsupported_key",
    17: "unsupported_key",
    18: "unsupported_key",
    19: "unsupported_key",  # ES521 on a P-256 key
    20: "unsupported_key",  # ES224
    21: "bad_jwk",  # use: enc
    22: "bad_jwk",  # point not on the curve
    23: "unsupported_key",  # crv P-384 with P-256 coordinates
    24: "unsupported_key",  # kty RSA labelled ES256
    25: "unsupported_key",  # AES-GCM key
    26: "unsupported_key",  # AES-KW key
}


def _jwk_verdict(case: Case) -> str:
    try:
        keys = load_jwks({"keys": list(case.keys)})
    except InvalidKey as e:
        return e.reason
    return _verdict(keys, case.token)


@pytest.mark.parametrize("case", JWK_CASES, ids=lambda c: c.id)
def test_json_web_key_vector(case: Case) -> None:
    verdict = _jwk_verdict(case)
    assert verdict == JWK_REASONS[case.tc_id]
    if case.supported:
        assert (verdict == "valid") == (case.expected == "valid")
    else:
        assert verdict != "valid"
        if case.expected == "valid":
            assert verdict in FAIL_CLOSED


def test_json_web_key_classification() -> None:
    tally = Counter(
        ("supported" if c.supported else "unsupported", c.expected, _jwk_verdict(c) == "valid")
        for c in JWK_CASES
    )
    assert sum(tally.values()) == 26
    assert tally == {
        ("supported", "valid", True): 1,
        ("supported", "invalid", False): 5,
        ("unsupported", "valid", False): 4,
        ("unsupported", "invalid", False): 16,
    }


# --- raw primitives ------------------------------------------------------------------------------


def _b64(hex_value: str, size: int | None = None) -> str:
    value = int(hex_value, 16)
    return b64url_encode(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


_CURVES = {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}


def _primitive_jwk(public: dict[str, Any], alg: str) -> dict[str, Any]:
    """The group's public key as the JWK a verifier would receive."""
    if alg in _CURVES:
        crv, size = _CURVES[alg]
        return {
            "kty": "EC",
            "crv": crv,
            "x": _b64(public["wx"], size),
            "y": _b64(public["wy"], size),
        }
    if alg == "EdDSA":
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(public["pk"], 32)}
    return {"kty": "RSA", "n": _b64(public["modulus"]), "e": _b64(public["publicExponent"])}


def _primitive_cases(name: str, alg: str) -> list[tuple[str, PublicKey, dict[str, Any]]]:
    cases = []
    for group in _load(name)["testGroups"]:
        jwk = _primitive_jwk(group["publicKey"], alg)
        key = load_public_jwk({**jwk, "alg": alg, "kid": "wycheproof"})
        cases.extend((f"{alg}-{t['tcId']}", key, t) for t in group["tests"])
    return cases


PRIMITIVE_FILES = {
    "ES256": "ecdsa_secp256r1_sha256_p1363_test.json",
    "ES384": "ecdsa_secp384r1_sha384_p1363_test.json",
    "ES512": "ecdsa_secp521r1_sha512_p1363_test.json",
    "EdDSA": "ed25519_test.json",
    "RS256": "rsa_signature_2048_sha256_test.json",
    "RS384": "rsa_signature_2048_sha384_test.json",
    "RS512": "rsa_signature_2048_sha512_test.json",
    "PS256": "rsa_pss_2048_sha256_mgf1_32_test.json",
    "PS384": "rsa_pss_2048_sha384_mgf1_48_test.json",
    "PS512": "rsa_pss_4096_sha512_mgf1_64_test.json",
}
PRIMITIVE_CASES = [
    case for alg, name in PRIMITIVE_FILES.items() for case in _primitive_cases(name, alg)
]


def test_every_supported_algorithm_has_primitive_vectors() -> None:
    assert sorted(PRIMITIVE_FILES) == sorted(SUPPORTED_ALGS)


@pytest.mark.parametrize(
    ("key", "test"), [c[1:] for c in PRIMITIVE_CASES], ids=[c[0] for c in PRIMITIVE_CASES]
)
def test_primitive_vector(key: PublicKey, test: dict[str, Any]) -> None:
    accepted = key.verify(bytes.fromhex(test["sig"]), bytes.fromhex(test["msg"]))
    # "acceptable" (one vector per PKCS #1 file, a DigestInfo without the NULL parameter):
    # we are strict.
    assert accepted == (test["result"] == "valid")


def test_primitive_vector_counts() -> None:
    tally = Counter((c[0].split("-")[0], c[2]["result"]) for c in PRIMITIVE_CASES)
    assert tally == {
        ("ES256", "valid"): 173,
        ("ES256", "invalid"): 89,
        ("ES384", "valid"): 193,
        ("ES384", "invalid"): 87,
        ("ES512", "valid"): 231,
        ("ES512", "invalid"): 87,
        ("EdDSA", "valid"): 88,
        ("EdDSA", "invalid"): 63,
        ("PS256", "valid"): 63,
        ("PS256", "invalid"): 45,
        ("PS384", "valid"): 95,
        ("PS384", "invalid"): 46,
        ("PS512", "valid"): 132,
        ("PS512", "invalid"): 47,
        ("RS256", "valid"): 9,
        ("RS256", "invalid"): 249,
        ("RS256", "acceptable"): 1,
        ("RS384", "valid"): 7,
        ("RS384", "invalid"): 250,
        ("RS384", "acceptable"): 1,
        ("RS512", "valid"): 8,
        ("RS512", "invalid"): 250,
        ("RS512", "acceptable"): 1,
    }
