"""``keyherald demo``: the orchestrator, or with a role, one process of the demo.

``keyherald demo`` alone starts everything and runs accelerated rotations;
``keyherald demo api|partner|loadgen|probe`` runs one role, as docker-compose.yml does.
"""

import argparse
import importlib

HELP = "run the whole system locally with accelerated rotation (or one demo role)"

#: role -> (module, one-line help)
ROLES: dict[str, tuple[str, str]] = {
    "api": ("keyherald.demo.api", "a verifying FastAPI service (GET /orders needs a token)"),
    "partner": ("keyherald.demo.partner", "a webhook receiver that registers with the relay"),
    "loadgen": ("keyherald.demo.loadgen", "mint tokens and call the verifying services"),
    "probe": ("keyherald.demo.probe", "exit 0 if a URL answers 2xx (compose health checks)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    importlib.import_module("keyherald.demo.orchestrator").add_arguments(parser)
    roles = parser.add_subparsers(
        dest="role",
        metavar="[ROLE]",
        title="one role instead of the whole system (optional; as docker-compose.yml runs them)",
    )
    for name, (module, help_) in ROLES.items():
        sub = roles.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    if args.role is None:
        module = "keyherald.demo.orchestrator"
    else:
        module = ROLES[args.role][0]
    result: int = importlib.import_module(module).run(args)
    return result
