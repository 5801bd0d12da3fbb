"""Child-process supervision for the demo: start, wait healthy, watch, and stop everything.

Each child runs in its own session (so its own process group): Ctrl-C in the terminal reaches
only the orchestrator, which then stops the children in reverse start order, SIGTERM to the
whole group first, SIGKILL after a grace period. On Linux each child also asks the kernel for
SIGTERM when the orchestrator dies (``PR_SET_PDEATHSIG``), so even a SIGKILLed orchestrator
leaves nothing behind.
"""

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

stop_grace_s = 5.0
health_poll_s = 0.1
_PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A child process exited early or never became healthy."""


def keyherald_argv(command: Sequence[str]) -> list[str]:
    """Turn a ``keyherald …`` command (as written in docker-compose.yml) into an argv that runs
    with this interpreter, whether or not the console script is on the PATH."""
    if not command or command[0] != "keyherald":
        raise ValueError(f'a demo command must start with "keyherald", the input is {command!r}')
    return [sys.executable, "-m", "keyherald.cli", *command[1:]]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One supervised process, its output going to ``log_path``.

    :param ready: polled until it returns true; ``None`` means "running is ready".
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the process in a new session."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Runs between fork and exec; safe because it takes no locks.
                preexec_fn=_die_with_parent,
            )
        logger.debug("started %s pid=%s", self.name, self.process.pid)

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        """:raises ChildFailed: the process has exited."""
        if not self.running():
            code = self.process.returncode if self.process is not None else None
            raise ChildFailed(f"{self.name} exited with {code}; last output:\n{self.log_tail()}")

    def wait_ready(self, deadline: float) -> None:
        """Block until ``ready()`` is true.

        :raises ChildFailed: the process exited or ``deadline`` (monotonic) passed.
        """
        while True:
            self.check_running()
            if self.ready is None or self.ready():
                return
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name} not ready in time; last output:\n{self.log_tail()}")
            time.sleep(health_poll_s)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace_s: float = stop_grace_s) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s``, reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, grace_s)
        # The leader may be gone while something it forked still runs in the group.
        self._signal_group(signal.SIGKILL)
        self.process.wait()


class Supervisor:
    """The demo's children, stopped in reverse start order on :meth:`stop_all`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        ready: Callable[[], bool] | None = None,
    ) -> Child:
        """Start ``command`` (a ``keyherald …`` command) as child ``name``."""
        child = Child(
            name,
            keyherald_argv(command),
            env=env,
            log_path=self.log_dir / f"{name}.log",
            ready=ready,
        )
        self.children.append(child)
        child.start()
        return child

    def wait_ready(self, timeout_s: float, names: Sequence[str] | None = None) -> None:
        """Wait for the named children (default all) to be ready."""
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if names is None or child.name in names:
                child.wait_ready(deadline)

    def check_alive(self) -> None:
        """:raises ChildFailed: some child exited."""
        for child in self.children:
            child.check_running()

    def stop_all(self) -> None:
        """Stop every child, newest first. Safe to call twice."""
        while self.children:
            child = self.children.pop()
            try:
                child.stop()
            except Exception:
                logger.exception("could not stop %s", child.name)

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def http_ready(url: str) -> Callable[[], bool]:
    """A readiness check: ``url`` answers 2xx."""

    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).is_success
        except httpx.HTTPError:
            return False

    return check


def redis_ready(url: str) -> Callable[[], bool]:
    """A readiness check: the Redis at ``url`` answers PING."""
    import redis

    def check() -> bool:
        # Not redis_conn's clients: this probes the one plain loopback server the demo started
        # (a sync client in a thread), and a probe must answer "not yet" at once, not retry.
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return check
