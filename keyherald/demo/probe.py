"""``keyherald demo probe URL``: exit 0 when ``URL`` answers 2xx; the compose health check."""

import argparse

import httpx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="URL that must answer 2xx")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")


def run(args: argparse.Namespace) -> int:
    try:
        return 0 if httpx.get(args.url, timeout=args.timeout).is_success else 1
    except httpx.HTTPError:
        return 1
