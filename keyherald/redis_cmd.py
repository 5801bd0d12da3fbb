"""``keyherald redis``: a private redis-server, for running the services by hand without one."""

import argparse
import signal
import threading

from .redis_server import RedisServer

HELP = "run a private redis-server on a free loopback port"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument(
        "--persistence", choices=("aof", "none"), default="aof", help="AOF on (default) or off"
    )


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RedisServer(port=args.port, persistence=args.persistence) as server:
        print(server.url, flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0
