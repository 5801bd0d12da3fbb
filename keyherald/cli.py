"""``keyherald`` command line: one entry point, each subcommand in the module that owns it.

A subcommand module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``keyherald verify``
does not pull in FastAPI.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help). Keep in sync with the README's CLI section.
COMMANDS: dict[str, tuple[str, str]] = {
    "redis": ("keyherald.redis_cmd", "run a private redis-server on a free loopback port"),
    "demo": ("keyherald.demo.cmd", "run the whole system locally with accelerated rotation"),
    "status": ("keyherald.status", "show the issuer's keys, the plan, and who holds which key"),
    "verify": ("keyherald.verify_cmd", "verify one token against a running issuer and explain"),
    "issuer": ("issuer.cli", "serve the key authority (JWKS, metadata, admin API, scheduler)"),
    "relay": ("relay.cli", "deliver key-rotation events to partner webhooks, signed and ordered"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyherald", description="Announced JWT signing-key rotation."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(selected).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    result: int = module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
