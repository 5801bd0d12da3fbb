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
import redis as redis_sync
import redis.asyncio as aioredis
import yaml

from keyherald.demo.procs import Supervisor, http_ready, keyherald_argv
from keyherald.demo.profile import DEMO
from keyherald.observe import EventTail, IssuerClient
from keyherald.redis_server import find_redis_server, free_port

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


def profile_services(compose: dict[str, Any], profile: str | None) -> dict[str, dict[str, Any]]:
    """The services ``docker compose [--profile P] up`` adds for ``profile`` (``None``: the
    services without a profile, the ones every ``up`` starts)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if (profile in svc["profiles"] if "profiles" in svc else profile is None)
    }


def keyherald_services(
    compose: dict[str, Any], profile: str | None = None
) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in profile_services(compose, profile).items()
        if command_of(svc)[0] == "keyherald"
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

    def __init__(self, compose: dict[str, Any], redis_url: str, profile: str | None = None) -> None:
        self.services = keyherald_services(compose, profile)
        self.ports: dict[tuple[str, int], int] = {}
        for name, svc in profile_services(compose, profile).items():
            cmd = command_of(svc)
            if "--port" in cmd:
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

        text = _URL.sub(local, text)
        # redis+sentinel://host:port,host:port/…: every compose host:port of this profile.
        for (host, port), new in self.ports.items():
            text = text.replace(f"{host}:{port}", f"127.0.0.1:{new}")
        return text

    def redis_command(self, name: str, services: dict[str, dict[str, Any]]) -> list[str]:
        """A redis-server (or sentinel) command on loopback: its own ``--port`` and every
        ``<service> <port>`` pair it names become local ports, hostnames 127.0.0.1."""
        cmd = command_of(services[name])
        out: list[str] = []
        for i, part in enumerate(cmd):
            if i and cmd[i - 1] == "--port":
                out.append(str(self.port(name)))
            elif i and cmd[i - 1] in services and part.isdigit():
                out.append(str(self.ports[(cmd[i - 1], int(part))]))
            elif part in services:
                out.append("127.0.0.1")
            else:
                out.append(part)
        return out

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
    assert set(profile_services(compose, None)) == {
        "redis",
        "issuer",
        "relay",
        "api-a",
        "api-b",
        "partner",
        "loadgen",
    }
    assert "--appendonly yes" in compose["services"]["redis"]["command"]
    assert set(profile_services(compose, "ha")) == {
        "redis-primary",
        "redis-replica-1",
        "redis-replica-2",
        "redis-sentinel-1",
        "redis-sentinel-2",
        "redis-sentinel-3",
        "issuer-ha",
        "api-ha",
    }
    for name, svc in [
        *keyherald_services(compose).items(),
        *keyherald_services(compose, "ha").items(),
    ]:
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


def _start_redis(lc: LocalCompose, services: dict[str, Any], name: str, root: Path) -> Any:
    """One redis-server or sentinel of the profile, as the container would run it: in its
    own working directory (a sentinel's entrypoint leaves an empty ``sentinel.conf`` there)."""
    binary = find_redis_server()
    assert binary is not None
    work = root / name
    work.mkdir()
    (work / "sentinel.conf").touch()
    cmd = lc.redis_command(name, services)
    assert cmd[0] == "redis-server", cmd
    with (work / "redis.log").open("ab") as log:
        return subprocess.Popen(
            [binary, *cmd[1:], "--bind", "127.0.0.1"], cwd=work, stdout=log, stderr=log
        )


def _until(check: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, redis_sync.RedisError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(60)
async def test_ha_profile_commands_rotate_over_sentinel(tmp_path) -> None:
    binary = find_redis_server()
    version = subprocess.run([binary or "false", "--version"], capture_output=True, text=True)
    if binary is None or not re.search(r"v=([7-9]|\d\d)\.", version.stdout):
        pytest.skip(f"the ha profile needs redis-server 7: {version.stdout.strip() or 'none'}")
    compose = load_compose()
    services = profile_services(compose, "ha")
    lc = LocalCompose(compose, "unused://", profile="ha")
    redis_names = [n for n in start_order(services) if n not in lc.services]
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[redis_sync.Redis] = []

    def client(name: str) -> redis_sync.Redis:
        clients.append(redis_sync.Redis(port=lc.port(name), socket_timeout=2))
        return clients[-1]

    try:
        for name in redis_names:
            procs.append(_start_redis(lc, services, name, tmp_path))
            _until(client(name).ping, f"{name} answering")
        for name in redis_names:
            if name.startswith("redis-sentinel"):
                sentinel = client(name)
                _until(
                    lambda s=sentinel: (
                        (m := s.sentinel_master("keyherald"))["num-slaves"] == 2
                        and m["num-other-sentinels"] == 2
                    ),
                    f"{name} to see 2 replicas and 2 other sentinels",
                )
        env = lc.env("api-ha")
        assert env["KEYHERALD_REDIS_URL"].startswith("redis+sentinel://127.0.0.1:")
        assert env["KEYHERALD_REDIS_URL"].endswith("/keyherald/0?read_from=replica")
        with Supervisor(tmp_path) as sup:
            for name in start_order(lc.services):
                sup.start(
                    name, lc.command(name), env=lc.env(name), ready=http_ready(lc.health_url(name))
                )
                await asyncio.to_thread(sup.wait_ready, 40, [name])
            admin = {"Authorization": f"Bearer {lc.env('issuer-ha')['KEYHERALD_ADMIN_TOKEN']}"}
            issuer = f"http://127.0.0.1:{lc.port('issuer-ha')}"
            api = f"http://127.0.0.1:{lc.port('api-ha')}"
            async with httpx.AsyncClient(timeout=5.0) as http:
                rotated = await http.post(f"{issuer}/admin/rotate", headers=admin)
                assert rotated.status_code == 201, rotated.text
                kid = rotated.json()["events"][0]["kid"]
                deadline = time.monotonic() + 10
                while kid not in (await http.get(f"{api}/healthz")).json()["kids"]:
                    assert time.monotonic() < deadline, "api-ha never heard of the new key"
                    await asyncio.sleep(0.1)
                minted = await http.post(
                    f"{issuer}/admin/tokens",
                    headers=admin,
                    json={"sub": "ha", "aud": "orders-api", "ttl_s": 8},
                )
                assert minted.status_code == 200, minted.text
                token = minted.json()["token"]
                orders = await http.get(
                    f"{api}/orders", headers={"Authorization": f"Bearer {token}"}
                )
                assert orders.status_code == 200, orders.text
            sup.check_alive()
        # The API follows the stream from a replica (the issuer reads its own on the primary).
        replicas = [client(f"redis-replica-{i}") for i in (1, 2)]
        assert any("cmdstat_xread" in r.info("commandstats") for r in replicas)
    finally:
        for c in clients:
            c.close()
        for proc in procs:
            proc.kill()
            proc.wait()
