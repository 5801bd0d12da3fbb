"""Real Redis topologies on loopback for the HA tests: processes on free ports, torn down
whatever happens (each process is killed by its own pid, its directory removed).

- :class:`SentinelTopology`: a primary, 2 replicas and 3 sentinels (quorum 2, down after 1 s).
- :class:`ClusterTopology`: 3 masters and 3 replicas (node timeout 1 s), slots assigned and
  replicas attached with plain cluster commands, so no ``redis-cli`` is needed.
"""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis

from keyherald.redis_server import ServerTls, find_redis_server, free_port, ping

SERVICE = "keyherald"
startup_timeout_s = 20.0


class Node:
    """One redis-server (or sentinel) process."""

    def __init__(
        self,
        binary: str,
        root: Path,
        name: str,
        args: list[str],
        conf: str = "",
        tls: ServerTls | None = None,
    ) -> None:
        self.port = free_port()
        self.tls = tls
        self.dir = root / name
        self.dir.mkdir()
        self.name = name
        command = [binary]
        if conf:
            path = self.dir / "sentinel.conf"
            path.write_text(conf.replace("{port}", str(self.port)).replace("{dir}", str(self.dir)))
            command += [str(path), "--sentinel"]
        command += [
            "--port", "0" if tls else str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            *args,
            *(tls.args(self.port) if tls else []),
        ]  # fmt: skip
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Node":
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited: {log}")
            if ping(self.port, self.tls):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer on port {self.port}")

    def client(self) -> redis.Redis:
        """A client of this node (one per node, closed when the node is killed)."""
        if self._client is None:
            tls: dict[str, Any] = {}
            if self.tls:
                tls = dict(
                    ssl=True,
                    ssl_ca_certs=self.tls.ca_cert_file,
                    ssl_certfile=self.tls.cert_file,
                    ssl_keyfile=self.tls.key_file,
                )
            self._client = redis.Redis(
                "127.0.0.1", self.port, socket_timeout=5, decode_responses=True, **tls
            )
        return self._client

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _server_args() -> list[str]:
    return [
        "--save", "",
        "--appendonly", "no",
        "--repl-diskless-sync", "yes",
        "--repl-diskless-sync-delay", "0",
        "--loglevel", "warning",
        "--maxclients", "2000",
    ]  # fmt: skip


def replicas_streaming(primary: Node, count: int) -> bool:
    """Whether ``count`` replicas acknowledge a write made now.

    INFO says ``online`` before the primary streams writes to a replica: after a diskless
    sync, Redis 7.0 waits for the replica's ``REPLCONF ACK`` ("Waiting for REPLCONF ACK from
    slave to enable streaming" in its log), and when the ACK the replica sends on loading
    arrives before the primary has reaped its RDB child, for the next one, up to a second
    later. Writes made meanwhile reach the replica only then.
    """
    client = primary.client()
    client.set("keyherald-test:replication-probe", "1")
    client.delete("keyherald-test:replication-probe")
    return int(client.wait(count, 100)) >= count


def _until(check: object, what: str, timeout_s: float = startup_timeout_s) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError) as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what} ({last})")


class _Topology:
    def __init__(self, tls: ServerTls | None = None) -> None:
        self.tls = tls
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server binary")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="keyherald-ha-"))
        self.nodes: list[Node] = []

    def _node(self, name: str, args: list[str], conf: str = "") -> Node:
        node = Node(self.binary, self.root, name, args, conf, self.tls)
        self.nodes.append(node)
        return node.start()

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "_Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SENTINEL_CONF = f"""
sentinel resolve-hostnames no
sentinel monitor {SERVICE} 127.0.0.1 {{primary}} 2
sentinel down-after-milliseconds {SERVICE} 1000
sentinel failover-timeout {SERVICE} 4000
sentinel parallel-syncs {SERVICE} 2
"""


class SentinelTopology(_Topology):
    """A primary, 2 replicas and 3 sentinels; with ``tls``, every node and every link
    between them speaks TLS only."""

    def __init__(self, tls: ServerTls | None = None) -> None:
        super().__init__(tls)
        try:
            self.servers = [self._node("primary", _server_args())]
            for i in (1, 2):
                args = [*_server_args(), "--replicaof", "127.0.0.1", str(self.servers[0].port)]
                self.servers.append(self._node(f"replica{i}", args))
            self._wait_replicas(self.servers[0], 2)
            conf = SENTINEL_CONF.replace("{primary}", str(self.servers[0].port))
            self.sentinels = [
                self._node(f"sentinel{i}", ["--loglevel", "warning"], conf) for i in (1, 2, 3)
            ]
            _until(self._sentinels_agree, "sentinels to see each other and the replicas")
        except BaseException:
            self.close()
            raise

    def _wait_replicas(self, primary: Node, count: int) -> None:
        def ready() -> bool:
            info = primary.client().info("replication")
            online = [
                v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"
            ]
            return len(online) >= count

        _until(ready, f"{count} replicas online")
        _until(lambda: replicas_streaming(primary, count), f"{count} replicas streaming")

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            master = sentinel.client().sentinel_master(SERVICE)
            if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < 2:
                return False
        return True

    def url(self, *, read_from: str = "primary") -> str:
        """The deployment URL; with TLS, it trusts the nodes' CA (add a client certificate
        if they require one)."""
        hosts = ",".join(s.address for s in self.sentinels)
        query = {"read_from": "replica"} if read_from == "replica" else {}
        if self.tls:
            query["ssl_ca_certs"] = self.tls.ca_cert_file
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{SERVICE}/0{'?' if query else ''}{urlencode(query)}"

    def primary(self) -> Node:
        """The server the sentinels currently name as primary."""
        host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
        return next(n for n in self.servers if n.port == int(port))

    def wait_failover(self, old: Node, timeout_s: float = 30.0) -> Node:
        """The new primary, once every sentinel names one other than ``old``."""

        def moved() -> bool:
            for sentinel in self.sentinels:
                _, port = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
                if int(port) == old.port:
                    return False
            return True

        _until(moved, "the sentinels to elect a new primary", timeout_s)
        return self.primary()


class ClusterTopology(_Topology):
    """3 masters and 3 replicas."""

    def __init__(self) -> None:
        super().__init__()
        try:
            args = [
                *_server_args(),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
            ]  # fmt: skip
            # An explicit bus port: the default (port + 10000) overflows for high free ports.
            self.bus: dict[str, int] = {}
            self.masters = [self._cluster_node(f"master{i}", args) for i in range(3)]
            self.replicas = [self._cluster_node(f"replica{i}", args) for i in range(3)]
            self._form()
        except BaseException:
            self.close()
            raise

    def _cluster_node(self, name: str, args: list[str]) -> Node:
        self.bus[name] = free_port()
        return self._node(name, [*args, "--cluster-port", str(self.bus[name])])

    def _form(self) -> None:
        first = self.masters[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, self.bus[node.name])
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for node, (low, high) in zip(self.masters, ranges, strict=True):
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        _until(
            lambda: all(
                len(n.client().execute_command("CLUSTER", "NODES").splitlines()) == 6
                for n in self.nodes
            ),
            "every node to know the others",
        )
        for master, replica in zip(self.masters, self.replicas, strict=True):
            master_id = master.client().execute_command("CLUSTER", "MYID")
            _until(
                lambda r=replica, m=master_id: r.client().execute_command(
                    "CLUSTER", "REPLICATE", m
                ),
                f"{replica.name} to replicate",
            )
        _until(
            lambda: all(
                "cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO")
                for n in self.nodes
            ),
            "cluster_state:ok",
        )
        _until(self._replicas_synced, "replicas in sync")

    def _replicas_synced(self) -> bool:
        for master in self.masters:
            info = master.client().info("replication")
            if int(info.get("connected_slaves", 0)) < 1:
                return False
        for node in self.nodes:
            shards = node.client().execute_command("CLUSTER", "SLOTS")
            if len(shards) != 3 or any(len(shard) < 4 for shard in shards):
                return False
        return True

    def url(self, *, read_from: str = "primary") -> str:
        hosts = ",".join(n.address for n in self.masters)
        query = "?read_from=replica" if read_from == "replica" else ""
        return f"redis+cluster://{hosts}{query}"

    def owner(self, key: str) -> tuple[Node, Node]:
        """``(master, replica)`` serving ``key``'s slot now."""
        client = next(n for n in self.nodes if n.alive).client()
        slot = client.execute_command("CLUSTER", "KEYSLOT", key)
        for low, high, master, *replicas in client.execute_command("CLUSTER", "SLOTS"):
            if low <= slot <= high and replicas:
                return self._at(int(master[1])), self._at(int(replicas[0][1]))
        raise RuntimeError(f"no master with a replica owns slot {slot}")

    def _at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)
