"""``keyherald issuer``: serve the issuer (JWKS, metadata, admin API, scheduler) with uvicorn."""

import argparse
import logging
import textwrap

from .errors import ConfigError
from .settings import IssuerSettings

logger = logging.getLogger(__name__)

HELP = "serve the key authority: JWKS, metadata, admin API and the rotation scheduler"


def settings_help() -> str:
    """One line per setting: environment variable, default and meaning."""
    lines = ["settings (environment variables; durations in seconds):"]
    for name, field in IssuerSettings.model_fields.items():
        default = "required" if field.is_required() else f"default {_show(name, field.default)}"
        lines.append(f"  KEYHERALD_{name.upper()}")
        lines.append(textwrap.indent(f"{field.description} ({default})", "      "))
    return "\n".join(lines)


def _show(name: str, value: object) -> str:
    if value is None:
        return "unset"
    if name.endswith("_s") and isinstance(value, float):
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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    try:
        settings = IssuerSettings()  # type: ignore[call-arg]  # issuer comes from the env
        app = create_app(settings=settings)
    except (ConfigError, ValueError) as e:
        # pydantic's ValidationError is a ValueError; it names the setting, never a secret.
        logger.error("cannot start the issuer: %s", e)
        return 2
    logger.info("issuer %s serving on http://%s:%s", settings.issuer, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, lifespan="on")
    return 0
