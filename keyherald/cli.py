"""``keyherald`` command line: one entry point, each subcommand in the module that owns it.

A subcommand module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``keyherald verify``
does not pull in FastAPI.

Every command fails the same way (``keyherald.errors``): one line per problem on stderr,
saying what is wrong and what to do; exit code 2 for configuration (settings, arguments, a
missing extra), 1 for a failure while running; a traceback only with ``--debug``.
"""

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import EXTRA_OF_MODULE, CommandError, ConfigurationError

#: subcommand -> (module, one-line help). Keep in sync with the README's CLI section.
COMMANDS: dict[str, tuple[str, str]] = {
    "redis": ("keyherald.redis_cmd", "run a private redis-server on a free loopback port"),
    "demo": ("keyherald.demo.cmd", "run the whole system locally with accelerated rotation"),
    "status": ("keyherald.status", "show the issuer's keys, the plan, and who holds which key"),
    "verify": ("keyherald.verify_cmd", "verify one token against a running issuer and explain"),
    "issuer": ("issuer.cli", "serve the key authority (JWKS, metadata, admin API, scheduler)"),
    "watch": ("watcher.cli", "announce Auth0, Okta, Entra, Google, Keycloak or Cognito keys"),
    "relay": ("relay.cli", "deliver key-rotation events to partner webhooks, signed and ordered"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a log level: use one of {', '.join(LOG_LEVELS)}"
        )
    return level


class _Parser(argparse.ArgumentParser):
    """argparse, failing like every other keyherald error: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="keyherald", description="Announced JWT signing-key rotation.")
    parser.add_argument(
        "--log-level", type=_log_level, default="INFO", help="DEBUG, INFO (default), WARNING, ERROR"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == selected:
            _import(name, module).add_arguments(p)
    return parser


def _import(command: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise _missing_extra(command, e) from e


def _missing_extra(command: str, error: ModuleNotFoundError) -> Exception:
    extra = EXTRA_OF_MODULE.get((error.name or "").split(".")[0])
    if extra is None:
        return error
    return ConfigurationError(
        f"needs the {extra!r} extra ({error.name} is not installed): "
        f"pip install 'keyherald[{extra}]'"
    )


def _fail(command: str, error: CommandError) -> int:
    for problem in error.problems:
        print(f"keyherald {command}: {problem}", file=sys.stderr)
    return error.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if a in COMMANDS), None)
    command = selected or "?"
    debug = "--debug" in argv
    try:
        args = build_parser(selected).parse_args(argv)
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        module = _import(args.command, COMMANDS[args.command][0])
        result: int = module.run(args)
        return result
    except CommandError as e:
        if debug:
            raise
        return _fail(command, e)
    except (RedisConnectionError, RedisTimeoutError) as e:
        if debug:
            raise
        return _fail(command, _redis_failure(command, e))
    except ModuleNotFoundError as e:
        found = _missing_extra(command, e)
        if debug:
            raise
        return _fail(command, found if isinstance(found, CommandError) else _unexpected(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`keyherald status | head`): what it wanted was printed.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if debug:
            raise
        return _fail(command, _unexpected(e))


#: The setting that names each command's Redis, where it is not KEYHERALD_REDIS_URL.
_REDIS_SETTING = {"relay": "KEYHERALD_RELAY_REDIS_URL", "watch": "KEYHERALD_WATCH_REDIS_URL"}


def _redis_failure(command: str, error: Exception) -> CommandError:
    from .redis_check import redis_failure  # on the error path only: commands load light

    setting = _REDIS_SETTING.get(command, "KEYHERALD_REDIS_URL (or the command's --redis-url)")
    return redis_failure(error, setting)


def _unexpected(error: BaseException) -> CommandError:
    return CommandError(
        f"unexpected error: {type(error).__name__}: {error} "
        "(run `keyherald --debug ...` for the traceback, and please report it)"
    )


if __name__ == "__main__":
    sys.exit(main())
