"""One way to name a Redis deployment: every form parses to redis-py's own clients, and a
URL that cannot work is refused naming the setting, without the password."""

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from subscriber.redis_conn import RedisConfigError, connect, parse_redis_url, redact


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "tls"),
    [
        ("redis://127.0.0.1:6379/0", "standalone", [("127.0.0.1", 6379)], False),
        ("rediss://u:pw@h:6380/1?ssl_ca_certs=/ca.pem", "standalone", [("h", 6380)], True),
        ("unix:///run/redis.sock?db=2", "standalone", [], False),
        ("redis+sentinel://a,b:26380/svc", "sentinel", [("a", 26379), ("b", 26380)], False),
        ("rediss+sentinel://a/svc/2", "sentinel", [("a", 26379)], True),
        ("redis+cluster://a:7000,b:7001", "cluster", [("a", 7000), ("b", 7001)], False),
        ("rediss+cluster://a", "cluster", [("a", 6379)], True),
    ],
)
def test_every_form_parses(url: str, kind: str, hosts: list, tls: bool) -> None:
    target = parse_redis_url(url)
    assert (target.kind, list(target.hosts), target.tls) == (kind, hosts, tls)


def test_credentials_database_and_tls_options_reach_redis_py() -> None:
    url = (
        "rediss+sentinel://app:s3cret@a:26379,b/main/3?ssl_ca_certs=/etc/ca.pem"
        "&sentinel_username=sent&sentinel_password=sentpw&read_from=replica"
    )
    target = parse_redis_url(url)
    assert target.service == "main" and target.read_from_replica
    assert target.options["username"] == "app" and target.options["password"] == "s3cret"
    assert target.options["db"] == 3 and target.options["ssl_ca_certs"] == "/etc/ca.pem"
    assert target.sentinel_options["username"] == "sent"
    assert target.sentinel_options["password"] == "sentpw"
    assert target.sentinel_options["ssl_ca_certs"] == "/etc/ca.pem"  # one CA for the topology
    # The sentinels are plain Redis clients: TLS is ssl=True there, not a connection class.
    assert target.sentinel_options["ssl"] is True
    assert "connection_class" not in target.sentinel_options


@pytest.mark.parametrize(
    ("query", "checked"),
    [("", True), ("?ssl_check_hostname=false", False), ("?ssl_cert_reqs=none", None)],
)
def test_tls_checks_the_certificates_names_unless_told_not_to(query: str, checked) -> None:
    # redis-py 5.x (keyherald's floor is 5.3) does not check them by default.
    for url in (f"rediss://h:6380/0{query}", f"rediss+sentinel://a/svc{query}"):
        assert parse_redis_url(url).options.get("ssl_check_hostname") is checked, url
    assert "ssl_check_hostname" not in parse_redis_url("redis://h/0").options


def test_a_tls_file_that_cannot_be_read_is_refused_by_name(tmp_path) -> None:
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(RedisConfigError) as caught:
        connect(f"rediss://127.0.0.1:1/0?ssl_ca_certs={missing}", setting="KEYHERALD_REDIS_URL")
    assert str(caught.value).startswith("KEYHERALD_REDIS_URL (standalone 127.0.0.1:1 (TLS)): ")
    assert f"ssl_ca_certs={missing} cannot be read" in str(caught.value)


def test_plain_replicas_imply_reading_the_stream_from_them() -> None:
    target = parse_redis_url("redis://p:6379/0?replicas=r1:6380,r2")
    assert target.read_from_replica
    assert target.replicas == (("r1", 6380), ("r2", 6379))
    assert target.plain_url == "redis://p:6379/0"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:6379", "unsupported scheme http://"),
        ("redis+sentinel://a:26379", "no service name"),
        ("redis+cluster://a/1", "only database 0"),
        ("redis://a?read_from=nearest", 'read_from must be "primary" or "replica"'),
        ("redis://a?socket_timeout=soon", "socket_timeout"),
        ("redis://a,b", "several hosts need redis+sentinel://"),
        ("redis+cluster://a?replicas=b", "replicas= is for plain URLs"),
        ("redis://a?sentinel_password=x", "apply to redis+sentinel:// only"),
        ("redis://a:port", "is not host[:port]"),
    ],
)
def test_unusable_urls_are_refused_naming_the_setting(url: str, problem: str) -> None:
    with pytest.raises(RedisConfigError, match="KEYHERALD_REDIS_URL") as caught:
        parse_redis_url(url, setting="KEYHERALD_REDIS_URL")
    assert problem in str(caught.value)


def test_errors_never_carry_a_password() -> None:
    with pytest.raises(RedisConfigError) as caught:
        parse_redis_url("redis+sentinel://u:hunter2@a?sentinel_password=hunter3")
    assert "hunter" not in str(caught.value)
    assert "hunter" not in redact("rediss://u:hunter2@h/0?sentinel_password=hunter3")


async def test_clients_are_redis_pys_own() -> None:
    sentinel = connect("redis+sentinel://127.0.0.1:1/svc?read_from=replica")
    try:
        assert isinstance(sentinel.primary.connection_pool, SentinelConnectionPool)
        assert sentinel.primary.connection_pool.is_master
        assert not sentinel.stream.connection_pool.is_master
    finally:
        await sentinel.aclose()
    cluster = connect("redis+cluster://127.0.0.1:1")
    try:
        assert isinstance(cluster.primary, RedisCluster) and cluster.stream is cluster.primary
    finally:
        await cluster.aclose()


async def burst(url: str, pool_timeout_s: float | None) -> list[str]:
    """Six blocking reads at once through a pool of two connections: how they ended."""
    clients = connect(url, max_connections=2, pool_timeout_s=pool_timeout_s)
    try:
        reads = [clients.primary.blpop(["keyherald:test:nothing"], timeout=0.2) for _ in range(6)]
        ended = await asyncio.gather(*reads, return_exceptions=True)
    finally:
        await clients.aclose()
    # MaxConnectionsError from redis-py 6 on, a plain ConnectionError before.
    return sorted({"read" if e is None else str(e) for e in ended})


async def test_a_pool_that_waits_queues_a_burst_instead_of_refusing_it(redis_url: str) -> None:
    assert await burst(redis_url, pool_timeout_s=None) == ["Too many connections", "read"]
    assert await burst(redis_url, pool_timeout_s=5.0) == ["read"]
