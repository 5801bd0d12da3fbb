import os
import subprocess
import sys

import pytest

from keyherald.cli import COMMANDS
from keyherald.redis_server import RedisServer, RedisServerError


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in COMMANDS:
        assert name in out


def test_redis_on_a_taken_port_says_so(redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]  # the session's Redis holds it
    done = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "redis", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        f"keyherald redis: port {port} on 127.0.0.1 is taken (another Redis?): pick another "
        "--port, or leave it out for a free one"
    )


def test_redis_server_refuses_a_taken_port(redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(RedisServerError, match="is taken"):
        RedisServer(port=port, persistence="none").start()


def help_of(*command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "keyherald.cli", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"COLUMNS": "200", "PATH": ""},
    ).stdout


def test_help_texts_say_what_happens() -> None:
    assert "[ROLE] ..." in help_of("demo")  # a role is optional
    relay = help_of("relay")
    assert "432000 s = 5 d" in relay and "432000.0" not in relay
    assert "(default None)" not in relay
    assert "default $KEYHERALD_ISSUER, else http://127.0.0.1:8000" in help_of("status")
    assert "never the token's own iss" in help_of("verify")


def test_relay_reports_every_missing_setting_by_its_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
    done = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "relay"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "keyherald relay: KEYHERALD_RELAY_ISSUER is not set",
        "keyherald relay: KEYHERALD_RELAY_ADMIN_TOKEN is not set",
    ]


def test_a_demo_role_with_a_bad_setting_says_which_in_one_line() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "KEYHERALD_DEMO_REQUESTS_PER_S": "-3"}
    done = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "demo", "loadgen"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "KEYHERALD_DEMO_REQUESTS_PER_S" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
