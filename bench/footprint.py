"""What a verifier costs a process: memory and start-up time per additional verifier, and idle.

Runs everything on this machine:

- a private ``redis-server`` and the real issuer (``keyherald issuer``) as its own process,
  on 127.0.0.1, over plain ``http://``;
- in this process, N verifiers created the way a service creates one, with nothing but
  ``Verifier(issuer=..., audience=..., redis_url=...)`` (no client passed in): each starts
  (metadata, JWKS, stream) one after another.

It prints, beside each target of issue 15:

- **memory per additional verifier**: resident set growth from the first verifier to the
  last, divided by N - 1 (the first one pays the imports);
- **cold start per additional verifier**: mean ``start()`` time of verifiers 2..N;
- **idle CPU of the N verifiers**: this process's CPU time over an idle window (no
  events; the issuer still writes its freshness record), as a fraction of one core;
- **idle Redis commands/s per verifier**: over a second idle window, the commands Redis
  receives from this process's connections (``MONITOR``; not the calls a Lua script makes,
  not the issuer's), divided by N.

    python bench/footprint.py                  # N = 200, 10 s idle window
    python bench/footprint.py --verifiers 1000 --idle 20
    python bench/footprint.py --quick          # N = 5, 2 s: checks the script runs
"""

import argparse
import asyncio
import base64
import gc
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import redis

from keyherald.redis_server import RedisServer, free_port
from subscriber import Verifier

ROOT = Path(__file__).resolve().parent.parent
AUDIENCE = "bench"
MiB = 1024 * 1024


def start_issuer(redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "KEYHERALD_ISSUER": url,
        "KEYHERALD_REDIS_URL": redis_url,
        "KEYHERALD_KEK": base64.b64encode(os.urandom(32)).decode(),
    }
    cli = Path(sys.executable).parent / "keyherald"
    proc = subprocess.Popen(
        [str(cli), "issuer", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/.well-known/jwks.json", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the issuer did not start")
        time.sleep(0.1)


_END = "keyherald-footprint-window-end"


def client_commands(redis_url: str, ports: set[int]) -> int:
    """Commands Redis receives from connections on ``ports`` until ``ECHO _END`` arrives."""
    # A sync observer (MONITOR, in a thread) of the plain server the bench started: not a
    # client under test, and redis_conn builds async clients only.
    client = redis.Redis.from_url(redis_url)
    count = 0
    with client.monitor() as monitor:
        while True:
            command = monitor.next_command()
            if command.get("command") == f"ECHO {_END}":
                break
            port = int(command.get("client_port") or 0)
            if command.get("client_type") != "lua" and port in ports:
                count += 1
    client.close()
    return count


def local_ports(me: psutil.Process, redis_port: int) -> set[int]:
    return {
        c.laddr.port
        for c in me.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == redis_port
    }


async def run(issuer: str, redis_url: str, n: int, idle_s: float) -> dict[str, float]:
    me = psutil.Process()
    verifiers: list[Verifier] = []
    starts: list[float] = []
    rss_after_first = 0.0
    try:
        for i in range(n):
            verifier = Verifier(issuer=issuer, audience=AUDIENCE, redis_url=redis_url)
            begin = time.perf_counter()
            await verifier.start()
            starts.append(time.perf_counter() - begin)
            verifiers.append(verifier)
            if i == 0:
                gc.collect()
                rss_after_first = me.memory_info().rss
        await asyncio.sleep(1.0)  # first heartbeats and blocking reads settle
        gc.collect()
        rss_after_all = me.memory_info().rss
        cpu_before, wall_before = me.cpu_times(), time.perf_counter()
        await asyncio.sleep(idle_s)
        cpu_after, wall_after = me.cpu_times(), time.perf_counter()
        # A second window: MONITOR's parsing runs in this process and must not count as CPU.
        ports = local_ports(me, int(redis_url.rsplit(":", 1)[1].split("/")[0]))
        counting = asyncio.ensure_future(asyncio.to_thread(client_commands, redis_url, ports))
        await asyncio.sleep(idle_s)
        with redis.Redis.from_url(redis_url) as marker:
            marker.echo(_END)
        commands = await counting
    finally:
        await asyncio.gather(*(v.aclose() for v in verifiers))
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    wall = wall_after - wall_before
    others = starts[1:] or starts
    return {
        "mem_mib": (rss_after_all - rss_after_first) / max(1, n - 1) / MiB,
        "start_ms": sum(others) / len(others) * 1e3,
        "first_ms": starts[0] * 1e3,
        "commands_per_s": commands / idle_s / n,
        "cpu_core": cpu / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verifiers", type=int, default=200, help="N (default 200)")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, s (default 10)")
    parser.add_argument("--quick", action="store_true", help="N = 5, 2 s idle")
    args = parser.parse_args(argv)
    n, idle_s = (5, 2.0) if args.quick else (args.verifiers, args.idle)
    logging.basicConfig(level=logging.ERROR)
    with RedisServer(persistence="none") as server:
        proc, issuer = start_issuer(server.url)
        try:
            result = asyncio.run(run(issuer, server.url, n, idle_s))
        finally:
            proc.terminate()
            proc.wait(10)
    # Idle CPU scales with N: the target is stated for 1,000 verifiers.
    cpu_per_1000 = result["cpu_core"] * 1000 / n
    print(f"verifier footprint: {n} verifiers in one process, {idle_s:g} s idle window, "
          f"{os.cpu_count()} CPUs (shared machine: figures move with its load)")  # fmt: skip
    print(f"{'figure':<44} {'measured':>10} {'target':>10}")
    rows = [
        ("memory per additional verifier (MiB)", f"{result['mem_mib']:.3f}", "<= 1"),
        ("cold start per additional verifier (ms)", f"{result['start_ms']:.2f}", "<= 5"),
        ("cold start of the first verifier (ms)", f"{result['first_ms']:.1f}", "-"),
        ("idle Redis commands/s per verifier", f"{result['commands_per_s']:.3f}", "<= 0.2"),
        ("idle CPU per 1,000 verifiers (% of a core)", f"{cpu_per_1000 * 100:.1f}", "<= 3"),
    ]
    for name, measured, target in rows:
        print(f"{name:<44} {measured:>10} {target:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
