"""``keyherald issuer``: help documents every setting; a bad environment exits cleanly."""

import os

import pytest

from issuer.settings import IssuerSettings
from keyherald.cli import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYHERALD_"):
            monkeypatch.delenv(name)


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["issuer", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in IssuerSettings.model_fields:
        assert f"KEYHERALD_{name.upper()}" in out
    assert "--host" in out and "--port" in out
    assert "518400 s = 6 d" in out  # the default lead, readable


def test_unsafe_policy_refuses_to_start_with_the_numbers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KEYHERALD_ISSUER", "http://x")
    monkeypatch.setenv("KEYHERALD_KEK", "A" * 43 + "=")
    monkeypatch.setenv("KEYHERALD_LEAD_S", "10")
    assert main(["issuer", "--port", "1"]) == 2
    assert "lead_s=10" in caplog.text and "960" in caplog.text


def test_missing_kek_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KEYHERALD_ISSUER", "http://x")
    assert main(["issuer", "--port", "1"]) == 2
    assert "KEYHERALD_KEK" in caplog.text


def test_missing_issuer_refuses_to_start(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["issuer"]) == 2
    assert "issuer" in caplog.text and "Field required" in caplog.text
