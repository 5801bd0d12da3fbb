"""Settings from the environment, the CLI entry point."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from relay.settings import DEFAULT_RETRY_SCHEDULE_S, RelaySettings


def test_settings_read_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("KEYHERALD_RELAY_ISSUER", "https://issuer.example")
    monkeypatch.setenv("KEYHERALD_RELAY_ADMIN_TOKEN", "secret-token-value")
    monkeypatch.setenv("KEYHERALD_RELAY_RETRY_SCHEDULE_S", "[0, 0.5, 2]")
    monkeypatch.setenv("KEYHERALD_RELAY_EGRESS_ALLOW", '["127.0.0.1"]')
    settings = RelaySettings()
    assert settings.retry_schedule_s == [0, 0.5, 2]
    assert settings.egress_allow == ["127.0.0.1"]
    assert settings.jwks() == "https://issuer.example/.well-known/jwks.json"
    assert "secret-token-value" not in repr(settings)


def test_default_schedule_is_standard_webhooks() -> None:
    assert DEFAULT_RETRY_SCHEDULE_S[:4] == (0.0, 5.0, 300.0, 1800.0)


def test_claim_idle_time_must_exceed_the_delivery_timeout(monkeypatch) -> None:
    monkeypatch.setenv("KEYHERALD_RELAY_ISSUER", "https://issuer.example")
    monkeypatch.setenv("KEYHERALD_RELAY_ADMIN_TOKEN", "t")
    monkeypatch.setenv("KEYHERALD_RELAY_DELIVERY_TIMEOUT_S", "30")
    monkeypatch.setenv("KEYHERALD_RELAY_IDLE_BEFORE_CLAIM_S", "20")
    with pytest.raises(ValidationError, match=r"idle_before_claim_s \(20.0\)"):
        RelaySettings()


def test_cli_help_lists_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "relay", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "KEYHERALD_RELAY_RETRY_SCHEDULE_S" in out and "--port" in out


def test_cli_refuses_to_start_without_settings(monkeypatch) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "relay"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2
    assert "issuer" in done.stderr
