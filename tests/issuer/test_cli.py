"""``keyherald issuer``: help documents every setting; a bad environment exits cleanly."""

import os
import subprocess
import sys

from issuer.settings import IssuerSettings


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
    return subprocess.run(
        [sys.executable, "-m", "keyherald.cli", *args],
        capture_output=True, text=True, env={**clean, **(env or {})}, timeout=30,
    )  # fmt: skip


def test_help_documents_every_setting() -> None:
    result = _run("issuer", "--help")
    assert result.returncode == 0
    for name in IssuerSettings.model_fields:
        assert f"KEYHERALD_{name.upper()}" in result.stdout
    assert "--host" in result.stdout and "--port" in result.stdout
    assert "518400 s = 6 d" in result.stdout  # the default lead, readable


def test_unsafe_policy_refuses_to_start_with_the_numbers() -> None:
    env = {"KEYHERALD_ISSUER": "http://x", "KEYHERALD_KEK": "A" * 43 + "=",
           "KEYHERALD_LEAD_S": "10"}  # fmt: skip
    result = _run("issuer", "--port", "1", env=env)
    assert result.returncode == 2
    assert "lead_s=10" in result.stderr and "960" in result.stderr


def test_missing_kek_refuses_to_start() -> None:
    result = _run("issuer", "--port", "1", env={"KEYHERALD_ISSUER": "http://x"})
    assert result.returncode == 2
    assert "KEYHERALD_KEK" in result.stderr
