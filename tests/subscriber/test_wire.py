"""The wire primitives: strict base64url/JSON and signed events."""

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subscriber.errors import EventError, MalformedToken
from subscriber.events import (
    Event,
    announcement_jwk,
    load_announcement_keys,
    parse_event,
    sign_event,
)
from subscriber.jws import b64url_decode, b64url_encode, strict_json_object

ISSUER = "https://id.example.com"


def test_b64url_roundtrip() -> None:
    for n in range(64):
        data = os.urandom(n)
        assert b64url_decode(b64url_encode(data)) == data


@pytest.mark.parametrize("segment", ["YR", "YQ==", "Y+Q", "Y/QQ", "Y Q", "A", "é"])
def test_b64url_refuses_non_canonical(segment: str) -> None:
    with pytest.raises(MalformedToken):
        b64url_decode(segment)


@pytest.mark.parametrize("data", [b'{"a":1,"a":2}', b"[1]", b'{"a":NaN}', b"\xff", b""])
def test_strict_json_refuses(data: bytes) -> None:
    with pytest.raises(MalformedToken):
        strict_json_object(data)


def _signed() -> tuple[dict[str, str], dict[str, object], Event]:
    sk = Ed25519PrivateKey.generate()
    jwk = announcement_jwk(sk.public_key())
    event = Event(
        type="key-retired", issuer=ISSUER, epoch="e", version=7, kid="k1", ts=5.0,
        data={"reason": "revoked"}, prev="sha256:before", digest="sha256:after",
    )  # fmt: skip
    return sign_event(event, sk, jwk["kid"]), load_announcement_keys([jwk]), event


def test_signed_event_roundtrip_from_bytes() -> None:
    fields, keys, event = _signed()
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    assert parse_event(raw, keys, issuer=ISSUER) == event


def test_tampered_event_is_forged() -> None:
    fields, keys, _ = _signed()
    header, payload, sig = fields["jws"].split(".")
    other = Event(type="key-retired", issuer=ISSUER, epoch="e", version=8, kid="k2", ts=5.0,
                  data={"reason": "revoked"})  # fmt: skip
    sk = Ed25519PrivateKey.generate()
    forged = sign_event(other, sk, next(iter(keys)))  # right kid, wrong key
    for jws in (f"{header}.{forged['jws'].split('.')[1]}.{sig}", forged["jws"]):
        with pytest.raises(EventError) as info:
            parse_event({**fields, "jws": jws}, keys, issuer=ISSUER)
        assert info.value.reason == "forged_event"


def test_event_for_another_issuer_is_refused() -> None:
    fields, keys, _ = _signed()
    with pytest.raises(EventError) as info:
        parse_event(fields, keys, issuer="https://other.example.com")
    assert info.value.reason == "wrong_issuer"
