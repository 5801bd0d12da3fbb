"""Process supervision: children and everything they fork are gone after stop."""

import os
import sys
import time
from pathlib import Path

import pytest

from keyherald.demo.procs import Child, ChildFailed, Supervisor, keyherald_argv


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once reaped or defunct.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


# A parent that forks a grandchild, prints its pid, and ignores SIGTERM (a badly behaved
# service): the supervisor must still leave nothing behind.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(p.pid, flush=True)
time.sleep(60)
"""


def test_stop_kills_the_whole_group_even_if_sigterm_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    child = Child("stubborn", [sys.executable, "-c", STUBBORN], env=dict(os.environ), log_path=log)
    child.start()
    try:
        deadline = time.monotonic() + 10
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(log.read_text().split()[0])
        assert alive(grandchild)
    finally:
        child.stop(grace_s=0.5)
    assert child.pid is not None and wait_gone(child.pid)
    assert wait_gone(grandchild)


def test_supervisor_stops_in_reverse_order_and_reports_a_dead_child(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as sup:
        sleeper = sup.start("sleeper", ["keyherald", "redis", "--help"], env=dict(os.environ))
        sleeper.process.wait(30)
        with pytest.raises(ChildFailed, match="sleeper exited with 0"):
            sup.check_alive()
    assert sup.children == []


def test_wait_ready_fails_with_the_childs_output(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as sup:
        sup.start(
            "bad", ["keyherald", "no-such-command"], env=dict(os.environ), ready=lambda: False
        )
        with pytest.raises(ChildFailed, match="invalid choice"):
            sup.wait_ready(20)


def test_commands_must_be_keyherald_commands() -> None:
    assert keyherald_argv(["keyherald", "issuer"])[-1] == "issuer"
    with pytest.raises(ValueError, match="must start with"):
        keyherald_argv(["python", "-m", "http.server"])
