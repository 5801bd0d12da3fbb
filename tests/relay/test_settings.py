"""Settings from the environment, the CLI entry point."""

import base64
import logging
import subprocess
import sys

import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from relay.cli import build_relay
from relay.errors import ConfigError
from relay.keysource import SnapshotKeySource
from relay.service import Relay
from relay.settings import DEFAULT_RETRY_SCHEDULE_S, RelaySettings
from subscriber.jwks_client import JwksClient


def test_settings_read_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("KEYHERALD_RELAY_ISSUER", "https://issuer.example")
    monkeypatch.setenv("KEYHERALD_RELAY_ADMIN_TOKEN", "secret-token-value")
    monkeypatch.setenv("KEYHERALD_RELAY_RETRY_SCHEDULE_S", "[0, 0.5, 2]")
    monkeypatch.setenv("KEYHERALD_RELAY_EGRESS_ALLOW", '["127.0.0.1"]')
    settings = RelaySettings()
    assert settings.retry_schedule_s == [0, 0.5, 2]
    assert settings.egress_allow == ["127.0.0.1"]
    assert settings.snapshot() == "https://issuer.example/.well-known/keyherald-snapshot.jwt"
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
    assert "KEYHERALD_RELAY_ISSUER is not set" in done.stderr


def _relay_from(settings: RelaySettings) -> Relay:
    client = httpx.AsyncClient()
    keys = SnapshotKeySource(JwksClient(client, settings.issuer), settings.issuer, {})
    return build_relay(settings, aioredis.Redis(), keys, {})


def test_a_relay_kek_is_read_and_a_bad_one_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("KEYHERALD_RELAY_ISSUER", "https://issuer.example")
    monkeypatch.setenv("KEYHERALD_RELAY_ADMIN_TOKEN", "t")
    kek = base64.b64encode(bytes(range(32))).decode()
    monkeypatch.setenv("KEYHERALD_RELAY_KEK", kek)
    settings = RelaySettings()
    assert kek not in repr(settings)
    assert _relay_from(settings).partners._kek is not None
    monkeypatch.setenv("KEYHERALD_RELAY_KEK", "not-base64!")
    with pytest.raises(ConfigError) as bad:
        _relay_from(RelaySettings())
    assert bad.value.reason == "bad_kek" and "KEYHERALD_RELAY_KEK" in str(bad.value)
    assert "not-base64!" not in str(bad.value)


def test_without_a_relay_kek_the_relay_warns_that_secrets_are_in_clear(monkeypatch, caplog) -> None:
    monkeypatch.setenv("KEYHERALD_RELAY_ISSUER", "https://issuer.example")
    monkeypatch.setenv("KEYHERALD_RELAY_ADMIN_TOKEN", "t")
    monkeypatch.delenv("KEYHERALD_RELAY_KEK", raising=False)
    with caplog.at_level(logging.WARNING, logger="relay.cli"):
        relay = _relay_from(RelaySettings())
    assert relay.partners._kek is None
    assert "stored in Redis in clear" in caplog.text
