"""``keyherald issuer``: help documents every setting; a bad environment is one line per
problem, all at once, naming the variables, exit code 2, no traceback."""

import base64
import os
import subprocess
import sys

import pytest

from issuer.settings import IssuerSettings
from keyherald.cli import main
from keyherald.redis_server import free_port

GOOD_KEK = base64.b64encode(bytes(range(100, 132))).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYHERALD_"):
            monkeypatch.delenv(name)


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """Run ``keyherald issuer``; it must exit 2; returns its stderr lines."""
    assert main(["issuer", "--port", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert all(line.startswith("keyherald issuer: ") for line in lines), lines
    return lines


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["issuer", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in IssuerSettings.model_fields:
        assert f"KEYHERALD_{name.upper()}" in out
    assert "--host" in out and "--port" in out
    assert "518400 s = 6 d" in out  # the default lead, readable


def test_unsafe_policy_names_the_variables_and_the_numbers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYHERALD_ISSUER", "https://id.example.com")
    monkeypatch.setenv("KEYHERALD_KEK", GOOD_KEK)
    monkeypatch.setenv("KEYHERALD_LEAD_S", "10")
    [line] = refused(capsys)
    assert "KEYHERALD_LEAD_S=10" in line and "960" in line


def test_every_missing_setting_is_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    lines = refused(capsys)
    assert len(lines) == 2
    assert lines[0] == "keyherald issuer: KEYHERALD_ISSUER is not set"
    assert "KEYHERALD_KEK is not set" in lines[1] and "openssl rand -base64 32" in lines[1]


@pytest.mark.parametrize(
    ("kek", "says"),
    [
        (bytes(32).hex(), "looks like hex"),
        (os.urandom(32).hex(), "looks like hex"),
        (base64.b64encode(bytes(32)).decode(), "repeats 1 distinct byte"),
        (base64.b64encode(b"my-very-secret-passphrase-123456").decode(), "ASCII text"),
        (base64.b64encode(os.urandom(16)).decode(), "decodes to 16 bytes"),
        ("not base64 at all!", "not valid base64"),
    ],
)
def test_a_weak_or_malformed_kek_is_refused_with_the_fix(
    kek: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYHERALD_ISSUER", "https://id.example.com")
    monkeypatch.setenv("KEYHERALD_KEK", kek)
    [line] = refused(capsys)
    assert line.startswith("keyherald issuer: KEYHERALD_KEK ")
    assert says in line and "openssl rand -base64 32" in line
    assert kek not in line  # a KEK, even a bad one, is never echoed


@pytest.mark.parametrize(
    ("issuer", "says"),
    [
        ("", "is empty"),
        ("id.example.com", "must be an https URL"),
        ("ftp://id.example.com", "must be an https URL"),
        ("http://id.example.com", "must use https"),
        ("https://id.example.com/", "must not end with '/'"),
        ("https://id.example.com?x=1", "without query"),
    ],
)
def test_a_bad_issuer_url_is_refused(
    issuer: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYHERALD_ISSUER", issuer)
    monkeypatch.setenv("KEYHERALD_KEK", GOOD_KEK)
    [line] = refused(capsys)
    assert "KEYHERALD_ISSUER" in line and says in line


@pytest.mark.parametrize(
    "issuer", ["https://id.example.com", "http://127.0.0.1:8000", "http://localhost:8000"]
)
def test_https_and_loopback_http_issuers_are_accepted(issuer: str) -> None:
    assert IssuerSettings(issuer=issuer, kek=GOOD_KEK).issuer == issuer  # type: ignore[arg-type]


def test_plain_http_elsewhere_needs_the_development_flag() -> None:
    settings = IssuerSettings(issuer="http://issuer:8000", kek=GOOD_KEK, dev_http_issuer=True)  # type: ignore[arg-type]
    assert settings.issuer == "http://issuer:8000"


def test_unreachable_redis_is_one_line_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYHERALD_ISSUER", "https://id.example.com")
    monkeypatch.setenv("KEYHERALD_KEK", GOOD_KEK)
    monkeypatch.setenv("KEYHERALD_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("KEYHERALD_REDIS_TIMEOUT_S", "1")
    assert main(["issuer", "--port", "1"]) == 1
    err = capsys.readouterr().err
    [line] = err.strip().splitlines()
    assert "cannot reach Redis at 127.0.0.1:" in line and "KEYHERALD_REDIS_URL" in line


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_a_missing_extra_names_the_pip_command() -> None:
    # A base install (no issuer extra): pydantic_settings cannot be imported.
    code = (
        "import sys; sys.modules['pydantic_settings'] = None; "
        "from keyherald.cli import main; sys.exit(main(['issuer']))"
    )
    done = run_cli(code)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "keyherald issuer: needs the 'issuer' extra (pydantic_settings is not installed): "
        "pip install 'keyherald[issuer]'"
    )


def test_a_bad_log_level_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--log-level", "foo", "issuer"])
    assert info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "'foo' is not a log level" in line and "DEBUG, INFO, WARNING, ERROR" in line
