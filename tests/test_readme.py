"""The README's settings tables and command list keep up with the code."""

from pathlib import Path

import pytest

from keyherald.cli import COMMANDS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_issuer_setting_is_documented() -> None:
    from issuer.settings import IssuerSettings

    for name in IssuerSettings.model_fields:
        assert f"`KEYHERALD_{name.upper()}`" in README, name


def test_every_relay_setting_is_documented() -> None:
    settings = pytest.importorskip("relay.settings")
    for name in settings.RelaySettings.model_fields:
        assert f"KEYHERALD_RELAY_{name.upper()}`" in README, name


def test_every_demo_setting_is_documented() -> None:
    from keyherald.demo.settings import DemoSettings

    for name in DemoSettings.model_fields:
        if name.startswith("demo_"):
            assert f"`KEYHERALD_{name.upper()}`" in README, name


def test_every_command_is_listed() -> None:
    for name in COMMANDS:
        assert f"`keyherald {name}" in README, name


def test_quick_start_is_exactly_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]
