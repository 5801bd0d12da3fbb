"""docker-compose.yml cannot drift from the code: its commands run here as local processes.

Docker is not needed: each service's ``command`` is a plain ``keyherald …`` command, started
with the environment of ``deploy/keyherald.env`` plus the service's own ``environment``. Only
addresses are rewritten: ``redis://redis:6379`` becomes this test's Redis, and every
``<service>:<port>`` (from each service's ``--port``) becomes ``127.0.0.1:<free port>``.
"""

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import yaml

from keyherald.demo.procs import Supervisor, http_ready, keyherald_argv
from keyherald.demo.profile import DEMO
from keyherald.observe import EventTail, IssuerClient
from keyherald.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
_URL = re.compile(r"(?P<scheme>https?)://(?P<host>[A-Za-z0-9.-]+):(?P<port>\d+)")


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def load_env_file(path: Path) -> dict[str, str]:
    """docker compose env_file syntax: KEY=VALUE lines, # comments, no quote processing."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def keyherald_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in compose["services"].items() if command_of(svc)[0] == "keyherald"
    }


def start_order(services: dict[str, dict[str, Any]]) -> list[str]:
    """Services in depends_on order (only among the given ones)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in services[name].get("depends_on") or {}:
            if dep in services:
                visit(dep)
        order.append(name)

    for name in services:
        visit(name)
    return order


class LocalCompose:
    """The compose services, rewritten to run on 127.0.0.1 next to each other."""

    def __init__(self, compose: dict[str, Any], redis_url: str) -> None:
        self.services = keyherald_services(compose)
        self.ports: dict[tuple[str, int], int] = {}
        for name, svc in self.services.items():
            cmd = command_of(svc)
            self.ports[(name, int(cmd[cmd.index("--port") + 1]))] = free_port()
        self.redis_url = redis_url

    def port(self, name: str) -> int:
        return next(p for (svc, _), p in self.ports.items() if svc == name)

    def rewrite(self, text: str, service: str | None = None) -> str:
        text = text.replace("redis://redis:6379/0", self.redis_url)

        def local(match: re.Match[str]) -> str:
            host, port = match["host"], int(match["port"])
            if host in ("127.0.0.1", "localhost") and service is not None:
                host = service
            new = self.ports.get((host, port))
            return f"{match['scheme']}://127.0.0.1:{new}" if new else match[0]

        return _URL.sub(local, text)

    def command(self, name: str) -> list[str]:
        cmd = [self.rewrite(part, name) for part in command_of(self.services[name])]
        cmd[cmd.index("--port") + 1] = str(self.port(name))
        cmd[cmd.index("--host") + 1] = "127.0.0.1"
        return cmd

    def env(self, name: str) -> dict[str, str]:
        svc = self.services[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
        for env_file in [svc["env_file"]] if isinstance(svc["env_file"], str) else svc["env_file"]:
            env.update(load_env_file(ROOT / env_file))
        extra = svc.get("environment") or {}
        env.update(extra if isinstance(extra, dict) else dict(e.split("=", 1) for e in extra))
        return {k: self.rewrite(v) for k, v in env.items()}

    def health_command(self, name: str) -> list[str]:
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD", test
        return [self.rewrite(part, name) for part in test[1:]]

    def health_url(self, name: str) -> str:
        return next(part for part in self.health_command(name) if part.startswith("http"))


def test_every_service_runs_a_plain_keyherald_command() -> None:
    compose = load_compose()
    assert set(compose["services"]) == {
        "redis",
        "issuer",
        "relay",
        "api-a",
        "api-b",
        "partner",
        "loadgen",
    }
    assert "--appendonly yes" in compose["services"]["redis"]["command"]
    for name, svc in keyherald_services(compose).items():
        assert svc["env_file"] == "deploy/keyherald.env", name
        assert "--port" in command_of(svc) and "--host" in command_of(svc), name
        assert svc["healthcheck"]["test"][:2] == ["CMD", "keyherald"], name
        keyherald_argv(command_of(svc))
    assert len(keyherald_services(compose)) == 6


def test_env_file_carries_the_demo_schedule() -> None:
    env = load_env_file(ROOT / "deploy" / "keyherald.env")
    for key, value in DEMO.env().items():
        assert key in env, key
        try:
            assert float(env[key]) == float(value), key
        except ValueError:
            assert env[key] == value, key
    json.loads(env["KEYHERALD_RELAY_EGRESS_ALLOW"])


def test_the_demo_schedule_passes_the_issuers_policy_checks() -> None:
    from issuer.settings import IssuerSettings

    env = load_env_file(ROOT / "deploy" / "keyherald.env")
    names = {k.removeprefix("KEYHERALD_").lower(): v for k, v in env.items()}
    settings = IssuerSettings(
        **{k: v for k, v in names.items() if k in IssuerSettings.model_fields}
    )
    policy = settings.policy()
    assert policy.rotation_period_s == DEMO.rotation_period_s


async def _watch_rotation(lc: LocalCompose, timeout_s: float) -> dict[str, Any]:
    issuer = f"http://127.0.0.1:{lc.port('issuer')}"
    redis = aioredis.Redis.from_url(lc.redis_url)
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            client = IssuerClient(issuer, client=http)
            tail = await EventTail.for_issuer(redis, client)
            seen: list[Any] = []
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                seen += await tail.poll(block_ms=500)
                activated = [
                    e for e in seen if e.type == "key-activated" and e.data["previous_kid"]
                ]
                retired = {e.kid for e in seen if e.type == "key-retired"}
                if activated and activated[0].data["previous_kid"] in retired:
                    break
            stats = (await http.get(f"http://127.0.0.1:{lc.port('loadgen')}/stats")).json()
            received = (await http.get(f"http://127.0.0.1:{lc.port('partner')}/received")).json()
            return {"events": seen, "stats": stats, "received": received, "refused": tail.refused}
    finally:
        await redis.aclose()


@pytest.mark.timeout(150)
async def test_compose_commands_carry_a_full_rotation(redis, redis_url, tmp_path) -> None:
    lc = LocalCompose(load_compose(), redis_url)
    with Supervisor(tmp_path) as sup:
        for name in start_order(lc.services):
            sup.start(
                name, lc.command(name), env=lc.env(name), ready=http_ready(lc.health_url(name))
            )
            await asyncio.to_thread(sup.wait_ready, 60, [name])
        for name in lc.services:
            probe = lc.health_command(name)
            done = await asyncio.to_thread(
                subprocess.run, keyherald_argv(probe), capture_output=True, timeout=30
            )
            assert done.returncode == 0, (name, probe)
        # One full rotation with the env file's own schedule: the next key is published,
        # activated, and the bootstrap key retired once its grace is over.
        seen = await _watch_rotation(
            lc, timeout_s=DEMO.rotation_period_s + DEMO.retire_grace_s + 20
        )
        sup.check_alive()
    events = seen["events"]
    types = [e.type for e in events]
    assert types.count("key-activated") >= 2, types
    assert any(e.type == "key-retired" and e.data["reason"] == "expired" for e in events), types
    assert seen["refused"] == 0
    stats = seen["stats"]
    assert stats["valid_rejected"] == 0, stats["valid_rejections"]
    assert stats["verified"] > 0
    assert len(stats["kids_verified"]) >= 2, "tokens of both keys must have been verified"
    received = seen["received"]
    assert received["delivered"] > 0 and received["out_of_order"] == 0
    assert received["rejected"] == 0


def test_local_rewrite_maps_every_service_address() -> None:
    lc = LocalCompose(load_compose(), "redis://127.0.0.1:1/0")
    env = lc.env("loadgen")
    assert env["KEYHERALD_REDIS_URL"] == "redis://127.0.0.1:1/0"
    for key in ("KEYHERALD_ISSUER", "KEYHERALD_DEMO_RELAY_URL", "KEYHERALD_DEMO_API_URLS"):
        hosts = re.findall(r"://([^:/]+)", env[key])
        assert hosts and set(hosts) == {"127.0.0.1"}, (key, env[key])
    assert sys.executable in keyherald_argv(lc.command("issuer"))
