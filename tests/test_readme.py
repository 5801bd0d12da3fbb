"""The README keeps up with the code: settings, commands, quick start, the issuer section
and the FastAPI example run as written."""

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from keyherald.cli import COMMANDS
from keyherald.demo.procs import Supervisor, http_ready
from keyherald.redis_server import free_port

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_issuer_setting_is_documented() -> None:
    from issuer.settings import IssuerSettings

    for name in IssuerSettings.model_fields:
        assert f"`KEYHERALD_{name.upper()}`" in README, name


def test_every_relay_setting_is_documented() -> None:
    settings = pytest.importorskip("relay.settings")
    for name in settings.RelaySettings.model_fields:
        assert f"KEYHERALD_RELAY_{name.upper()}`" in README, name


def test_every_watch_setting_is_documented() -> None:
    from watcher.settings import WatchSettings

    for name in WatchSettings.model_fields:
        assert f"`KEYHERALD_WATCH_{name.upper()}`" in README, name


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


def _blocks(section: str) -> list[str]:
    text = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2]]


def _readme_env(exports: list[str]) -> dict[str, str]:
    """The environment after running the README's export lines in bash, as written."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
    out = subprocess.run(
        ["bash", "-c", "\n".join([*exports, "env -0"])],
        env=clean, capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


async def test_the_issuer_section_and_fastapi_example_run_as_written(
    redis_url: str, tmp_path: Path
) -> None:
    """The README's issuer commands, its admin calls and its FastAPI service, run as written
    with only the variables it tells the reader to set. Only port numbers change: 8000 and
    6379 become free ones, since the test cannot own the well-known ports."""
    port, redis_port = str(free_port()), redis_url.rsplit(":", 1)[1].split("/")[0]

    def local(text: str) -> str:
        return text.replace("8000", port).replace("6379", redis_port)

    issuer_block, admin_block = (local(b) for b in _blocks("Running the issuer")[:2])
    lines = [line.split("  #")[0].strip() for line in issuer_block.splitlines()]
    exports = [line for line in lines if line.startswith("export ")]
    assert {e.split("=")[0] for e in exports} == {
        "export KEYHERALD_ISSUER", "export KEYHERALD_REDIS_URL", "export KEYHERALD_KEK",
        "export KEYHERALD_ADMIN_TOKEN",
    }  # fmt: skip
    [command] = [line for line in lines if line.startswith("keyherald issuer")]
    env = _readme_env(exports)
    with Supervisor(tmp_path) as supervisor:
        supervisor.start(
            "issuer",
            command.split(),
            env=env,
            ready=http_ready(env["KEYHERALD_ISSUER"] + "/.well-known/jwks.json"),
        )
        supervisor.wait_ready(30)
        admin = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", admin_block],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert admin.returncode == 0, admin.stderr
        assert '"state":"revoked"' in admin.stdout.replace(" ", "")  # $KID was defined
        assert '"token"' in admin.stdout

        code = _blocks("Using the subscriber in a FastAPI service")[0]
        with pytest.MonkeyPatch.context() as patch:
            for name in ("KEYHERALD_ISSUER", "KEYHERALD_REDIS_URL"):
                patch.setenv(name, env[name])
            namespace: dict = {}
            exec(compile(code, "README.md", "exec"), namespace)
        app = namespace["app"]
        token = await asyncio.to_thread(_mint, env)
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
                ok = await client.get("/orders", headers={"Authorization": f"Bearer {token}"})
                assert ok.status_code == 200 and ok.json() == {"sub": "alice"}
                bad = await client.get("/orders", headers={"Authorization": f"Bearer {token}x"})
                assert bad.status_code == 401
                assert 'error="invalid_token"' in bad.headers["www-authenticate"]


def _mint(env: dict[str, str]) -> str:
    response = httpx.post(
        env["KEYHERALD_ISSUER"] + "/admin/tokens",
        json={"sub": "alice", "aud": "orders-api", "ttl_s": 60},
        headers={"Authorization": f"Bearer {env['KEYHERALD_ADMIN_TOKEN']}"},
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token
