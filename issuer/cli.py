"""``keyherald issuer``: serve the issuer (JWKS, metadata, admin API, scheduler) with uvicorn."""

import argparse
import asyncio
import logging
import os
import re
import textwrap

from pydantic import ValidationError

from keyherald.errors import ConfigurationError, settings_problems
from keyherald.redis_check import check_redis

from .errors import ConfigError
from .kek import Kek
from .settings import IssuerSettings

logger = logging.getLogger(__name__)

HELP = "serve the key authority: JWKS, metadata, admin API and the rotation scheduler"


def settings_help() -> str:
    """One line per setting: environment variable, default and meaning."""
    lines = ["settings (environment variables; durations in seconds):"]
    for name, field in IssuerSettings.model_fields.items():
        default = (
            "required" if field.is_required() else f"default {show_default(name, field.default)}"
        )
        lines.append(f"  KEYHERALD_{name.upper()}")
        lines.append(textwrap.indent(f"{field.description} ({default})", "      "))
    return "\n".join(lines)


def show_default(name: str, value: object) -> str:
    """A default as a person reads it: ``unset``, ``432000 s = 5 d``, ``true``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if name.endswith("_s") and isinstance(value, int | float):
        value = float(value)
        shown = f"{value:.0f}" if value.is_integer() else f"{value:g}"
        for unit, seconds in (("d", 86_400), ("h", 3_600), ("min", 60)):
            if value >= seconds and value % seconds == 0:
                return f"{shown} s = {value / seconds:g} {unit}"
        return f"{shown} s"
    return repr(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = settings_help()
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def load_settings() -> tuple[IssuerSettings, Kek]:
    """The settings and KEK from the environment, or every problem with them at once.

    :raises ConfigurationError: one line per variable that is missing or wrong.
    """
    problems: list[str] = []
    settings: IssuerSettings | None = None
    try:
        settings = IssuerSettings()  # type: ignore[call-arg]  # issuer comes from the env
    except ValidationError as e:
        problems += settings_problems(e, "KEYHERALD_", secret=_SECRET)
    kek: Kek | None = None
    if settings is not None:
        try:
            settings.policy()
            kek = settings.load_kek()
        except ConfigError as e:
            problems.append(_env_names(str(e)))
    elif not os.environ.get("KEYHERALD_KEK") and not _truthy("KEYHERALD_DEV_EPHEMERAL_KEK"):
        problems.append(_MISSING_KEK)
    if problems or settings is None or kek is None:
        raise ConfigurationError(*problems)
    return settings, kek


_SECRET = frozenset({"kek", "admin_token"})
_MISSING_KEK = (
    "KEYHERALD_KEK is not set: generate one with `openssl rand -base64 32` (or, for a "
    "throwaway development key, set KEYHERALD_DEV_EPHEMERAL_KEK=true)"
)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_names(message: str) -> str:
    """A library message (``lead_s=10``) in the terms of the environment
    (``KEYHERALD_LEAD_S=10``)."""
    for name in IssuerSettings.model_fields:
        message = re.sub(rf"\b{name}=", f"KEYHERALD_{name.upper()}=", message)
    return message


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings, kek = load_settings()
    # Before "serving on": an unreachable Redis is one line here, not a traceback at startup.
    asyncio.run(
        check_redis(
            settings.redis_url,
            setting="KEYHERALD_REDIS_URL",
            socket_timeout_s=settings.redis_timeout_s,
        )
    )
    app = create_app(settings=settings, kek=kek)
    logger.info("issuer %s serving on http://%s:%s", settings.issuer, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, lifespan="on")
    return 0
