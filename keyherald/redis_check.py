"""A command's Redis, checked before it serves: it answers, or one line says why not.

``keyherald issuer``, ``relay`` and ``watch`` build their clients with
:func:`subscriber.redis_conn.connect`, so each accepts every URL spelling, and call
:func:`check_redis` first, so a TLS setting that cannot work or a Redis that is down is one
line and an exit code (:mod:`keyherald.errors`), not a traceback from a server's start-up.
"""

from redis.exceptions import RedisClusterException, RedisError

from subscriber.redis_conn import RedisConfigError, connect
from subscriber.redis_tls import tls_failure

from .errors import CommandError, ConfigurationError


def redis_failure(error: BaseException, setting: str, where: str = "") -> CommandError:
    """What a failed connection to Redis means for a command: a TLS problem, a setting to
    change (exit 2, naming the URL option), or a Redis that does not answer (exit 1).

    :param setting: the variable that names the URL.
    :param where: the addresses tried, for the message.
    """
    tls = tls_failure(error, setting=setting)
    if tls is not None:
        return ConfigurationError(str(tls))
    at = f" at {where}" if where else ""
    return CommandError(
        f"cannot reach Redis{at} ({type(error).__name__}: {error}): start it, or point "
        f"{setting} at a running one"
    )


async def check_redis(url: str, *, setting: str, socket_timeout_s: float | None = 5.0) -> None:
    """``PING`` the deployment's primary through clients built for the check, then closed
    (the command's own clients belong to the event loop it serves on).

    :param setting: the variable that names ``url``, in every message.
    :raises ConfigurationError: the URL cannot be used, or TLS with Redis fails.
    :raises CommandError: Redis does not answer.
    """
    try:
        clients = connect(url, setting=setting, socket_timeout_s=socket_timeout_s)
    except RedisConfigError as e:
        raise ConfigurationError(str(e)) from e
    try:
        await clients.primary.ping()
    except (RedisError, RedisClusterException, OSError) as e:
        where = ",".join(f"{host}:{port}" for host, port in clients.target.hosts)
        raise redis_failure(e, setting, where or clients.target.display) from e
    finally:
        await clients.aclose()
