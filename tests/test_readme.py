"""The README keeps up with the code: settings, commands, quick start, FastAPI example."""

import asyncio
from pathlib import Path

import httpx
import pytest

from keyherald.cli import COMMANDS
from tests.test_status_verify import issuer, mint  # noqa: F401 - the fixture

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


async def test_the_fastapi_example_verifies_tokens(issuer) -> None:  # noqa: F811
    """The README's FastAPI snippet, run as written against a real issuer and Redis."""
    code = README.split("## Using the subscriber in a FastAPI service", 1)[1]
    code = code.split("```python", 1)[1].split("```", 1)[0]
    code = code.replace("https://id.example.com", issuer["KEYHERALD_ISSUER"])
    code = code.replace("redis://127.0.0.1:6379/0", issuer["KEYHERALD_REDIS_URL"])
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    app = namespace["app"]
    token = (await asyncio.to_thread(mint, issuer))["token"]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            ok = await client.get("/orders", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.json() == {"sub": "alice"}
            refused = await client.get("/orders", headers={"Authorization": f"Bearer {token}x"})
            assert refused.status_code == 401
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
