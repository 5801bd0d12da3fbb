"""Properties of the verification hot path, checked with hypothesis (derandomized: repeatable).

- No change to a valid token, however small, yields a token that verifies, and every refusal
  is an :class:`InvalidToken` with a reason from the closed set (never another exception).
- The strict base64url decoder accepts exactly one spelling per byte string, and the inlined
  pair decoder of the hot path agrees with it.
- The strict JSON decoder (orjson when the input is in its compact form, the standard
  library otherwise) agrees with a reference decoder, value for value and type for type.
"""

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subscriber.errors import TOKEN_REASONS, InvalidClaims, InvalidToken, MalformedToken
from subscriber.jws import (
    URLSAFE_TO_STD,
    b64_std_decode_pair,
    b64url_decode_ascii,
    b64url_encode,
    strict_json_object,
)
from subscriber.verify import check_claims, verify_token
from tests.subscriber.test_verify import NOW, OPTIONS, Signer

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PROPERTY = settings(
    derandomize=True,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: Signer(alg, f"kid-{alg.lower()}") for alg in ("RS256", "ES256", "EdDSA")}


def _mutations() -> st.SearchStrategy[tuple[str, int, str]]:
    """(operation, position seed, text): replace, insert or delete characters of a token."""
    chars = st.sampled_from(ALPHABET + ".=+/ {}\"'é\x00")
    return st.tuples(
        st.sampled_from(["replace", "insert", "delete", "truncate", "swap"]),
        st.integers(min_value=0, max_value=10_000),
        st.text(alphabet=chars, min_size=1, max_size=3),
    )


def _mutate(token: str, mutation: tuple[str, int, str]) -> str:
    op, seed, text = mutation
    i = seed % len(token)
    if op == "replace":
        return token[:i] + text + token[i + len(text) :]
    if op == "insert":
        return token[:i] + text + token[i:]
    if op == "delete":
        return token[:i] + token[i + len(text) :]
    if op == "truncate":
        return token[:i]
    j = (i + 1 + seed // len(token)) % len(token)
    a, b = sorted((i, j))
    return token[:a] + token[b] + token[a + 1 : b] + token[a] + token[b + 1 :]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
@PROPERTY
@given(mutations=st.lists(_mutations(), min_size=1, max_size=3))
def test_no_mutation_of_a_valid_token_verifies(
    signers: dict[str, Signer], alg: str, mutations: list[tuple[str, int, str]]
) -> None:
    signer = signers[alg]
    keys = {s.kid: s.public for s in signers.values()}
    token = signer.token()
    mutated = token
    for mutation in mutations:
        mutated = _mutate(mutated, mutation) or "x"
    if mutated == token:
        return
    with pytest.raises(InvalidToken) as info:
        verify_token(mutated, keys, OPTIONS, NOW)
    assert info.value.reason in TOKEN_REASONS


@PROPERTY
@given(junk=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(b64url_encode)))
def test_arbitrary_input_is_refused_with_a_reason(signers: dict[str, Signer], junk: str) -> None:
    keys = {s.kid: s.public for s in signers.values()}
    for candidate in (junk, f"{junk}.{junk}.{junk}", f"eyJhbGciOiJFUzI1NiJ9.{junk}.AA"):
        with pytest.raises(InvalidToken) as info:
            verify_token(candidate, keys, OPTIONS, NOW)
        assert info.value.reason in TOKEN_REASONS


@PROPERTY
@given(data=st.binary(max_size=200))
def test_base64url_round_trips(data: bytes) -> None:
    assert b64url_decode_ascii(b64url_encode(data).encode()) == data


def _decode_or_none(segment: bytes) -> bytes | None:
    try:
        return b64url_decode_ascii(segment)
    except MalformedToken:
        return None


@PROPERTY
@given(segment=st.text(alphabet=ALPHABET + "=+/ ", max_size=40))
def test_base64url_has_one_spelling_per_value(segment: str) -> None:
    decoded = _decode_or_none(segment.encode())
    if decoded is not None:
        assert b64url_encode(decoded) == segment


@PROPERTY
@given(
    first=st.text(alphabet=ALPHABET + "=+/", max_size=20),
    second=st.text(alphabet=ALPHABET + "=+/", max_size=20),
)
def test_pair_decoder_agrees_with_the_single_decoder(first: str, second: str) -> None:
    # The hot path translates the whole token, then decodes two of its segments at once.
    one, two = _decode_or_none(first.encode()), _decode_or_none(second.encode())
    pair = (first.encode().translate(URLSAFE_TO_STD), second.encode().translate(URLSAFE_TO_STD))
    if one is None or two is None:
        with pytest.raises(MalformedToken):
            b64_std_decode_pair(*pair)
    else:
        assert b64_std_decode_pair(*pair) == (one, two)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


def _reference(text: str) -> Any:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=no_constant)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


@PROPERTY
@given(
    value=_JSON_VALUES,
    prefix=st.sampled_from(["", " ", "\n"]),
    suffix=st.sampled_from(["", " ", "\t\r\n", "x", "}", ',"a":1']),
)
def test_strict_json_agrees_with_the_reference_decoder(
    value: Any, prefix: str, suffix: str
) -> None:
    text = prefix + json.dumps(value) + suffix
    expected = _reference(text)
    try:
        got = strict_json_object(text.encode())
    except MalformedToken:
        got = None
    assert got == expected


_COMPACT_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, 1e16, 1e-7, -0.0, 1e308])
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


def _compact(value: Any, ensure_ascii: bool) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ensure_ascii)


@PROPERTY
@given(
    value=st.dictionaries(st.text(max_size=3), _COMPACT_VALUES, max_size=6),
    ensure_ascii=st.booleans(),
    duplicate=st.booleans(),
)
def test_compact_json_reads_as_the_reference_reads_it(
    value: dict[str, Any], ensure_ascii: bool, duplicate: bool
) -> None:
    # The compact form is the one the orjson path takes; a repeated member, at the front or
    # nested, must still be refused there. repr() tells 1 from 1.0 and -0.0 from 0.0.
    text = _compact(value, ensure_ascii)
    if duplicate and value:
        name, member = next(iter(value.items()))
        text = "{" + _compact(name, ensure_ascii) + ":" + _compact(member, ensure_ascii) + ","
        text += _compact({"n": value}, ensure_ascii)[1:]
        text = text.replace('"n":', _compact(name, ensure_ascii) + ":", 1)
    expected = _reference(text)
    try:
        got = strict_json_object(text.encode())
    except MalformedToken:
        got = None
    assert repr(got) == repr(expected)


def test_duplicate_names_are_found_at_any_depth() -> None:
    for text in (
        '{"a":1,"a":1}',
        '{"a":{"b":1,"b":2}}',
        '{"a":[{"c":1,"c":1}]}',
        '{"a":1, "a":1}',
        '{"\\u0061":1,"a":1}',
    ):
        with pytest.raises(MalformedToken):
            strict_json_object(text.encode())


def test_json_too_deep_for_the_fast_path_is_still_decided() -> None:
    # orjson reads 300 levels but will not write them back: the strict decoder decides.
    deep = "[" * 300 + "]" * 300
    assert strict_json_object(('{"a":' + deep + "}").encode()) == {"a": json.loads(deep)}


_CLAIM_VALUES = _JSON_VALUES | st.integers() | st.sampled_from([10**400, -(10**400), 1e308, -0.0])


@PROPERTY
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub"]), _CLAIM_VALUES, max_size=6
    ),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_check_claims_refuses_with_a_reason_or_accepts(claims: dict[str, Any], now: float) -> None:
    try:
        check_claims(claims, OPTIONS, now)
    except InvalidClaims as e:
        assert e.reason in TOKEN_REASONS
    else:
        assert claims["iss"] == OPTIONS.issuer and "exp" in claims
