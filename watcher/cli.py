"""``keyherald watch``: follow hosted identity providers' key sets and announce them to the fleet.

Settings come from the environment (``KEYHERALD_WATCH_…``, see ``keyherald watch --help``).
Several replicas may run against one Redis: one polls each upstream, under a fenced lease.
"""

import argparse
import asyncio
import logging
import textwrap

from issuer.errors import ConfigError

from .settings import WatchSettings

logger = logging.getLogger(__name__)

_SETTING = "KEYHERALD_WATCH_REDIS_URL"

HELP = "announce Auth0, Okta, Entra, Google, Keycloak or Cognito keys to every verifier"


def settings_help() -> str:
    """One line per setting: environment variable, default and meaning."""
    lines = ["settings (environment variables; durations in seconds):"]
    for name, field in WatchSettings.model_fields.items():
        default = "required" if field.is_required() else f"default {field.default!r}"
        lines.append(f"  KEYHERALD_WATCH_{name.upper()}")
        lines.append(textwrap.indent(f"{field.description} ({default})", "      "))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = settings_help()
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="port (default 8100)")


def run(args: argparse.Namespace) -> int:
    import httpx
    import uvicorn
    from pydantic import ValidationError

    from keyherald.errors import ConfigurationError, settings_problems
    from keyherald.redis_check import check_redis
    from subscriber.redis_conn import RedisConfigError, connect

    from .app import build_watches, create_app

    try:
        settings = WatchSettings()  # type: ignore[call-arg]  # upstreams come from the env
    except ValidationError as e:
        raise ConfigurationError(
            *settings_problems(e, "KEYHERALD_WATCH_", secret=frozenset({"kek"}))
        ) from e
    try:
        # A blocking pool: a burst of verifiers starting at once waits for a connection
        # instead of failing with "Too many connections".
        clients = connect(
            settings.redis_url,
            setting=_SETTING,
            socket_timeout_s=settings.redis_timeout_s,
            max_connections=64,
            pool_timeout_s=settings.redis_timeout_s,
        )
        http = httpx.AsyncClient(follow_redirects=False)
        # Writes, the lease and the hints all need the primary: read_from=replica is for
        # verifiers that share this URL.
        watches = build_watches(settings, clients.primary, http)
    except (ConfigError, RedisConfigError, ValueError) as e:
        raise ConfigurationError(" ".join(str(e).split())) from e
    # Before "serving on": a Redis that is down or a TLS option that cannot work is one line,
    # not a traceback from the app's start-up (the clients above have connected to nothing).
    asyncio.run(
        check_redis(settings.redis_url, setting=_SETTING, socket_timeout_s=settings.redis_timeout_s)
    )

    async def close() -> None:
        await http.aclose()
        await clients.aclose()

    app = create_app(watches, on_shutdown=close)
    for watch in watches:
        logger.info("watching %s", watch.issuer)
    logger.info("watcher serving on http://%s:%s", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, lifespan="on")
    return 0
