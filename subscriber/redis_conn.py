"""One way to name a Redis deployment, and the redis-py clients keyherald builds for it.

Every component (issuer, relay, :class:`~subscriber.Verifier`, ``keyherald status``, the
demo) takes one URL. Plain URLs are redis-py's own; Sentinel uses the ``redis+sentinel://``
spelling of redisvl, LangChain and Prefect/docket; Cluster the same shape with ``+cluster``::

    redis://[[user]:[password]@]host[:port][/db]            one server
    rediss://…?ssl_ca_certs=/etc/ca.pem                     one server over TLS
    unix:///run/redis.sock?db=0                             a Unix socket
    redis+sentinel://[[user]:[password]@]host[:port][,host[:port]…]/service[/db]
    rediss+sentinel://…                                     TLS to the nodes and the sentinels
    redis+cluster://[[user]:[password]@]host[:port][,host[:port]…]
    rediss+cluster://…

``user``/``password`` are the data nodes' ACL credentials. Query options of keyherald's own
(taken out before redis-py sees the rest, which it parses as usual: ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``socket_timeout``, …):

- ``read_from=replica``: the event stream is read from replicas (Sentinel discovers them,
  Cluster reads the slot's replicas, a plain URL lists them with ``replicas=``); writes,
  heartbeats and everything else stay on the primary. Events are signed, so a replica needs
  no trust.
- ``replicas=host:port[,host:port…]``: replica addresses for a plain URL (implies
  ``read_from=replica``).
- ``sentinel_username`` / ``sentinel_password``: the sentinels' own credentials.

Over TLS the server's certificate must chain to ``ssl_ca_certs`` (else to the system's CAs) and
list the host connected to, on every redis-py version keyherald supports, unless the URL says
``ssl_cert_reqs=none`` or ``ssl_check_hostname=false``. A failed handshake is an error (see
:mod:`subscriber.redis_tls`), never a reason to try plaintext.

A client built here follows a failover: Sentinel clients rediscover the primary, Cluster
clients the slot owner, and a plain client reconnects (a managed service's DNS name moves)
when a write lands on a read-only replica; each command is retried with jittered backoff.
"""

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ConstantBackoff
from redis.cluster import LoadBalancingStrategy
from redis.exceptions import ReadOnlyError

from .errors import KeyheraldError

Kind = Literal["standalone", "sentinel", "cluster"]
Address = tuple[str, int]

_SCHEMES: Mapping[str, tuple[Kind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT: Mapping[Kind, int] = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
_OWN_OPTIONS = ("read_from", "replicas", "sentinel_username", "sentinel_password")
#: Per-command retries around a failover: short and constant, because a request handler
#: waits for them (a stalled Redis must turn into a 503 within seconds, not a growing backoff).
retry_attempts = 10
retry_wait_s = 0.02


class RedisConfigError(KeyheraldError, ValueError):
    """A Redis URL that cannot be used; the message names the setting and what to change.

    Never carries a password: URLs in messages are redacted.
    """


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed deployment URL (see the module docstring).

    :param setting: the name of the setting it came from, used in every error message.
    :param hosts: the server, the sentinels, or the cluster seed nodes.
    :param replicas: replica addresses given with ``replicas=`` (plain URLs only).
    :param options: keyword arguments for redis-py's clients (credentials, db, TLS, timeouts).
    """

    setting: str
    kind: Kind
    tls: bool
    hosts: tuple[Address, ...]
    service: str | None = None
    read_from_replica: bool = False
    replicas: tuple[Address, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    sentinel_options: Mapping[str, Any] = field(default_factory=dict)
    #: The plain redis-py URL (standalone only), without keyherald's options.
    plain_url: str | None = None

    @property
    def display(self) -> str:
        """The deployment without credentials, for logs and messages."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts) or "unix socket"
        service = f"/{self.service}" if self.service else ""
        return f"{self.kind} {hosts}{service}{' (TLS)' if self.tls else ''}"


def redact(url: str) -> str:
    """``url`` with any password (in the user part or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{hosts}"
    query = urlencode(
        [(k, "***" if "password" in k else v) for k, v in parse_qsl(parts.query)], safe="*,:/"
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def parse_redis_url(url: str, *, setting: str = "redis_url") -> RedisTarget:
    """Parse a deployment URL.

    :param setting: named in errors (e.g. ``KEYHERALD_REDIS_URL``).
    :raises RedisConfigError: an unknown scheme, a missing service name, a bad option.
    """

    def fail(problem: str) -> RedisConfigError:
        return RedisConfigError(f"{setting} ({redact(url)}): {problem}")

    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            given = f"{scheme}://" if scheme else "(none)"
            raise ValueError(
                f"unsupported scheme {given}; use one of {', '.join(s + '://' for s in _SCHEMES)}"
            )
        kind, tls = _SCHEMES[scheme]
        query = parse_qsl(parts.query, keep_blank_values=True)
        if tls:
            query = _check_names_by_default(query)
        own = {k: v for k, v in query if k in _OWN_OPTIONS}
        rest = urlencode([(k, v) for k, v in query if k not in _OWN_OPTIONS])
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        target = RedisTarget(
            setting=setting,
            kind=kind,
            tls=tls,
            hosts=_addresses(hostlist, _DEFAULT_PORT[kind]) if scheme != "unix" else (),
            read_from_replica=_read_from(own),
            replicas=_addresses(own["replicas"], 6379) if "replicas" in own else (),
        )
        _check_shape(target, own, scheme)
        if kind == "standalone":
            base = url.strip().partition("?")[0]
            plain = f"{base}?{rest}" if rest else base
            return replace(target, plain_url=plain, options=dict(parse_url(plain)))
        return _multi_host(target, parts.path, userinfo, rest, own)
    except ValueError as e:  # ours, and redis-py's option parsing
        raise fail(str(e)) from e


def _check_names_by_default(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # redis-py 5.x (the floor is 5.3) does not check the certificate's names by default.
    given = dict(query)
    if "ssl_check_hostname" in given or given.get("ssl_cert_reqs") == "none":
        return query
    return [*query, ("ssl_check_hostname", "true")]


def _read_from(own: Mapping[str, str]) -> bool:
    read_from = own.get("read_from", "replica" if "replicas" in own else "primary")
    if read_from not in ("primary", "replica"):
        raise ValueError(f'read_from must be "primary" or "replica", the input is "{read_from}"')
    return read_from == "replica"


def _check_shape(target: RedisTarget, own: Mapping[str, str], scheme: str) -> None:
    if scheme != "unix" and not target.hosts:
        raise ValueError("no host")
    if target.kind != "sentinel" and {"sentinel_username", "sentinel_password"} & own.keys():
        raise ValueError("sentinel_username/sentinel_password apply to redis+sentinel:// only")
    if target.replicas and target.kind != "standalone":
        raise ValueError(
            f"replicas= is for plain URLs; {target.kind} finds its replicas (read_from=replica)"
        )
    if target.kind == "standalone" and len(target.hosts) > 1:
        raise ValueError("several hosts need redis+sentinel:// or redis+cluster://")


def _multi_host(
    target: RedisTarget, path: str, userinfo: str, rest: str, own: Mapping[str, str]
) -> RedisTarget:
    segments = [unquote(s) for s in path.split("/") if s]
    db = "0"
    if target.kind == "sentinel":
        if not segments:
            raise ValueError("no service name: redis+sentinel://host:26379,…/<service>[/db]")
        target = replace(target, service=segments[0])
        db = segments[1] if len(segments) > 1 else "0"
    elif segments:
        raise ValueError("a cluster has only database 0: leave the path empty")
    # redis-py parses credentials, db and the other options as it would for one host.
    one = f"{'rediss' if target.tls else 'redis'}://{userinfo + '@' if userinfo else ''}h/{db}"
    options: dict[str, Any] = dict(parse_url(f"{one}?{rest}" if rest else one))
    options.pop("host", None)
    if target.kind == "cluster":
        options.pop("db", None)
    # The sentinels are plain ``Redis`` clients, which take ``ssl=True``, not a connection class.
    sentinel_options: dict[str, Any] = {
        k: v for k, v in options.items() if k.startswith(("ssl", "socket_"))
    }
    if target.tls:
        sentinel_options["ssl"] = True
    if "sentinel_username" in own:
        sentinel_options["username"] = own["sentinel_username"]
    if "sentinel_password" in own:
        sentinel_options["password"] = own["sentinel_password"]
    return replace(target, options=options, sentinel_options=sentinel_options)


def _addresses(text: str, default_port: int) -> tuple[Address, ...]:
    found = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item.startswith("["):
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or (port and not port.isdigit()):
            raise ValueError(f'"{item}" is not host[:port]')
        found.append((unquote(host), int(port) if port else default_port))
    return tuple(found)


# -- clients ----------------------------------------------------------------------------------


class _Rotation:
    """The replicas from a random start, then the primary as a last resort. Every connection
    of a pool goes to the current address; a failed connect moves the pool on to the next."""

    def __init__(self, replicas: tuple[Address, ...], primary: Address) -> None:
        start = random.randrange(len(replicas))
        self._order = [*replicas[start:], *replicas[:start], primary]
        self._at = 0

    def current(self) -> Address:
        return self._order[self._at]

    def failed(self, address: Address) -> None:
        if self._order[self._at] == address:
            self._at = (self._at + 1) % len(self._order)


class _ReplicaConnection(Connection):
    """Connects to its pool's current replica (see :class:`_Rotation`)."""

    def __init__(self, *, rotation: _Rotation, **kwargs: Any) -> None:
        self._rotation = rotation
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        address = self._rotation.current()
        self.host, self.port = address
        try:
            await super()._connect()  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError):
            self._rotation.failed(address)  # redis-py's retry reconnects to the next one
            raise


class _ReplicaSSLConnection(_ReplicaConnection, SSLConnection):
    pass


@dataclass(slots=True)
class RedisClients:
    """The clients for one deployment.

    :param primary: every write and every read that must be current.
    :param stream: reads of the event stream (``XREAD``, ``XREVRANGE``): a replica when the
        URL asks for one, else the primary client itself.
    """

    target: RedisTarget
    primary: aioredis.Redis
    stream: aioredis.Redis
    _closers: list[Any] = field(default_factory=list)

    async def aclose(self) -> None:
        """Close every client and the sentinel connections."""
        for closer in self._closers:
            close = getattr(closer, "aclose", None)
            if close is not None:
                await close()
            else:  # a Sentinel before redis-py 7 has no aclose(): close its clients
                for client in getattr(closer, "sentinels", ()):
                    await client.aclose()
        self._closers.clear()


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool, waiting for a free connection as :class:`BlockingConnectionPool` does
    (redis-py has no such pool of its own)."""


def connect(
    url: str | RedisTarget,
    *,
    setting: str = "redis_url",
    socket_timeout_s: float | None = 5.0,
    max_connections: int | None = None,
    pool_timeout_s: float | None = None,
) -> RedisClients:
    """Build the clients for ``url``; no connection is made until the first command.

    :param pool_timeout_s: with ``max_connections`` in use, a command waits up to this long
        for one to come free (then ``ConnectionError``) instead of failing at once with
        ``MaxConnectionsError``: a burst of requests queues. Plain and Sentinel deployments
        only; redis-py's cluster client has no pool that waits.
    :raises RedisConfigError: the URL cannot be used (see :func:`parse_redis_url`), or a file
        it names (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) cannot be read.
    """
    target = url if isinstance(url, RedisTarget) else parse_redis_url(url, setting=setting)
    _check_files(target)
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "retry": Retry(ConstantBackoff(retry_wait_s), retry_attempts),
    }
    if max_connections is not None:
        common["max_connections"] = max_connections
    if target.kind == "sentinel":
        return _sentinel(target, common, pool_timeout_s)
    if target.kind == "cluster":
        return _cluster(target, common)
    assert target.plain_url is not None
    pool_class: type[aioredis.ConnectionPool] = aioredis.ConnectionPool
    if pool_timeout_s is not None:
        pool_class, common["timeout"] = aioredis.BlockingConnectionPool, pool_timeout_s
    # A managed primary endpoint (a DNS name) moves on failover: a write refused as read-only
    # drops the connection, and the retry reconnects to whatever the name now points at.
    pool = pool_class.from_url(target.plain_url, retry_on_error=[ReadOnlyError], **common)
    primary = aioredis.Redis.from_pool(pool)  # owns the pool: closed with it
    clients = RedisClients(target, primary, primary, [primary])
    if target.replicas:
        rotation = _Rotation(target.replicas, target.hosts[0])
        options = {k: v for k, v in target.options.items() if k not in ("host", "port")}
        options["connection_class"] = _ReplicaSSLConnection if target.tls else _ReplicaConnection
        clients.stream = aioredis.Redis.from_pool(
            pool_class(rotation=rotation, **options, **common)
        )
        clients._closers.append(clients.stream)
    return clients


def _check_files(target: RedisTarget) -> None:
    # Otherwise redis-py reports a missing file as "Error 2 connecting", on every attempt.
    for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = target.options.get(option)
        if path and not os.access(path, os.R_OK):
            raise RedisConfigError(
                f"{target.setting} ({target.display}): {option}={path} cannot be read: "
                "give the path of a readable PEM file"
            )


def _sentinel(
    target: RedisTarget, common: dict[str, Any], pool_timeout_s: float | None
) -> RedisClients:
    assert target.service is not None
    options = {k: v for k, v in target.options.items() if k != "connection_class"}
    sentinel_kwargs = {
        "socket_timeout": common["socket_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
        **target.sentinel_options,
    }
    sentinel = Sentinel(
        list(target.hosts), sentinel_kwargs=sentinel_kwargs, ssl=target.tls, **options, **common
    )
    pool: dict[str, Any] = {}
    if pool_timeout_s is not None:
        pool = {"connection_pool_class": _BlockingSentinelPool, "timeout": pool_timeout_s}
    primary = sentinel.master_for(target.service, **pool)
    clients = RedisClients(target, primary, primary, [primary])
    if target.read_from_replica:
        clients.stream = sentinel.slave_for(target.service, **pool)
        clients._closers.append(clients.stream)
    clients._closers.append(sentinel)
    return clients


def _cluster(target: RedisTarget, common: dict[str, Any]) -> RedisClients:
    options = {k: v for k, v in target.options.items() if k != "connection_class"}
    nodes = [ClusterNode(host, port) for host, port in target.hosts]
    kwargs = {**options, **common, "ssl": target.tls}
    cluster = RedisCluster(startup_nodes=nodes, **kwargs)
    # RedisCluster speaks the same command API as Redis but redis-py types them apart; every
    # multi-key operation keyherald makes stays on one issuer's {hash-tag}.
    primary = cast(aioredis.Redis, cluster)
    clients = RedisClients(target, primary, primary, [cluster])
    if target.read_from_replica:
        reader = RedisCluster(
            startup_nodes=nodes,
            load_balancing_strategy=LoadBalancingStrategy.RANDOM_REPLICA,
            **kwargs,
        )
        clients.stream = cast(aioredis.Redis, reader)
        clients._closers.append(reader)
    return clients


def socket_timeout(client: aioredis.Redis) -> float | None:
    """The socket timeout a client was built with (a cluster client keeps it elsewhere)."""
    pool = getattr(client, "connection_pool", None)
    holder = pool if pool is not None else getattr(client, "nodes_manager", None)
    value = getattr(holder, "connection_kwargs", {}).get("socket_timeout", 5.0)
    return None if value is None else float(value)


__all__ = [
    "RedisClients",
    "RedisConfigError",
    "RedisTarget",
    "connect",
    "parse_redis_url",
    "redact",
    "socket_timeout",
]
