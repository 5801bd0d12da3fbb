"""Unsafe rotation policies are refused at start-up, naming the numbers."""

import pytest

from issuer.errors import ConfigError
from issuer.policy import RotationPolicy
from tests.issuer.conftest import make_settings


def test_defaults_are_the_field_recommendation() -> None:
    policy = make_settings().policy()
    assert (policy.rotation_period_s, policy.lead_s, policy.retire_grace_s) == (
        90 * 86_400,
        6 * 86_400,
        7 * 86_400,
    )
    assert (policy.max_token_ttl_s, policy.jwks_max_age_s, policy.clock_skew_s) == (3600, 900, 60)
    assert policy.algorithm == "ES256"


def test_lead_shorter_than_cache_age_plus_skew_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        RotationPolicy(lead_s=600, jwks_max_age_s=900, clock_skew_s=60)
    message = str(info.value)
    assert "lead_s=600" in message and "jwks_max_age_s=900" in message and "960" in message


def test_grace_shorter_than_ttl_plus_cache_age_plus_skew_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        RotationPolicy(retire_grace_s=4000, max_token_ttl_s=3600, jwks_max_age_s=900)
    message = str(info.value)
    assert "retire_grace_s=4000" in message and "4560" in message


def test_lead_not_shorter_than_period_is_refused() -> None:
    with pytest.raises(ConfigError, match="rotation_period_s=100"):
        RotationPolicy(rotation_period_s=100, lead_s=100, jwks_max_age_s=1, clock_skew_s=0,
                       retire_grace_s=10, max_token_ttl_s=5)  # fmt: skip


@pytest.mark.parametrize("alg", ["HS256", "none", "ES521", "RSA-OAEP"])
def test_unsupported_algorithm_is_refused(alg: str) -> None:
    with pytest.raises(ConfigError, match=alg):
        RotationPolicy(algorithm=alg)


def test_demo_policy_of_seconds_is_accepted() -> None:
    policy = make_settings(
        rotation_period_s=20, lead_s=6, retire_grace_s=8, max_token_ttl_s=5,
        jwks_max_age_s=2, clock_skew_s=1,
    ).policy()  # fmt: skip
    assert policy.min_retire_grace_s == 8
    assert policy.stream_retention_s >= 86_400  # never a tiny stream, even for a demo


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from issuer.settings import IssuerSettings

    monkeypatch.setenv("KEYHERALD_ISSUER", "https://id.example.com")
    monkeypatch.setenv("KEYHERALD_LEAD_S", "1000")
    monkeypatch.setenv("KEYHERALD_ALGORITHM", "EdDSA")
    settings = IssuerSettings()  # type: ignore[call-arg]
    assert settings.issuer == "https://id.example.com"
    assert settings.policy().lead_s == 1000 and settings.policy().algorithm == "EdDSA"


def test_no_kek_is_refused_unless_the_dev_flag(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="KEYHERALD_KEK"):
        make_settings(kek=None).load_kek()
    kek = make_settings(kek=None, dev_ephemeral_kek=True).load_kek()
    assert kek.kek_id
    assert "ephemeral" in caplog.text and "DEVELOPMENT" in caplog.text
