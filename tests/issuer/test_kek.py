"""AES-256-GCM envelope: round trip, binding to kid and purpose, wrong KEK named not shown."""

import base64
import os

import pytest

from issuer.errors import ConfigError, KekError
from issuer.kek import Kek


def test_roundtrip_and_ciphertext_is_not_plaintext() -> None:
    kek = Kek(os.urandom(32))
    secret = os.urandom(48)
    sealed = kek.seal(secret, kid="k1", purpose="signing-key")
    assert secret not in base64.b64decode(sealed["ct"])
    assert kek.open(sealed, kid="k1", purpose="signing-key") == secret


@pytest.mark.parametrize(("kid", "purpose"), [("k2", "signing-key"), ("k1", "announcement-key")])
def test_sealed_key_is_bound_to_its_kid_and_purpose(kid: str, purpose: str) -> None:
    kek = Kek(os.urandom(32))
    sealed = kek.seal(b"secret", kid="k1", purpose="signing-key")
    with pytest.raises(KekError):
        kek.open(sealed, kid=kid, purpose=purpose)


def test_wrong_kek_is_refused_without_revealing_either() -> None:
    right, wrong = os.urandom(32), os.urandom(32)
    sealed = Kek(right).seal(b"secret", kid="k1", purpose="p")
    with pytest.raises(KekError) as info:
        Kek(wrong).open(sealed, kid="k1", purpose="p")
    for key in (right, wrong):
        assert base64.b64encode(key).decode() not in str(info.value)
        assert key.hex() not in str(info.value)
    assert right.hex() not in repr(Kek(right))


def test_tampered_ciphertext_is_refused() -> None:
    kek = Kek(os.urandom(32))
    sealed = kek.seal(b"secret", kid="k1", purpose="p")
    ct = bytearray(base64.b64decode(sealed["ct"]))
    ct[0] ^= 1
    with pytest.raises(KekError):
        kek.open({**sealed, "ct": base64.b64encode(ct).decode()}, kid="k1", purpose="p")


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_malformed_kek_setting_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        Kek.from_base64(value)


def test_urlsafe_base64_is_accepted() -> None:
    raw = bytes([0xFB, 0xFF, 0xFE, 0xFA, 0xF0, 0x3E, 0x3F, 0x7E] * 4)  # '-' and '_' in base64
    assert Kek.from_base64(base64.urlsafe_b64encode(raw).decode()).kek_id == Kek(raw).kek_id
