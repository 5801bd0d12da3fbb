"""``keyherald watch``: follow hosted identity providers' key sets and announce them to the fleet.

Settings come from the environment (``KEYHERALD_WATCH_…``, see ``keyherald watch --help``).
Several replicas may run against one Redis: one polls each upstream, under a fenced lease.
"""

import argparse
import logging
import textwrap

from issuer.errors import ConfigError

from .settings import WatchSettings

logger = logging.getLogger(__name__)

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
    import redis.asyncio as aioredis
    import uvicorn

    from .app import build_watches, create_app

    try:
        settings = WatchSettings()  # type: ignore[call-arg]  # upstreams come from the env
        # A blocking pool: a burst of verifiers starting at once waits for a connection
        # instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=64,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        redis = aioredis.Redis(connection_pool=pool)
        http = httpx.AsyncClient(follow_redirects=False)
        watches = build_watches(settings, redis, http)
    except (ConfigError, ValueError) as e:
        # pydantic's ValidationError is a ValueError; it names the setting, never a secret.
        logger.error("cannot start the watcher: %s", " ".join(str(e).split()))
        return 2

    async def close() -> None:
        await http.aclose()
        await redis.aclose()

    app = create_app(watches, on_shutdown=close)
    for watch in watches:
        logger.info("watching %s", watch.issuer)
    logger.info("watcher serving on http://%s:%s", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, lifespan="on")
    return 0
