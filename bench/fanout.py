"""Fan-out at fleet scale: N verifiers, each with Redis connections of its own (as N service
instances would have), reading the stream from 2 replicas while heartbeats go to the primary.

Runs everything on this machine:

- a primary and 2 replicas (redis-server on free loopback ports, ``maxclients`` raised);
- the real issuer app on uvicorn (bench/propagation.py's ``IssuerThread``);
- P worker processes holding N verifiers between them; each verifier gets its own clients
  (a ``client_name`` per verifier in the URL, so the per-process sharing of
  ``subscriber.clients`` does not fold them into one), URL
  ``redis://primary?replicas=r1,r2&client_name=…``.

It prints, per N: key-added → last verifier p50/p99 over the rounds (and over every
verifier), connected clients per node, and, per 1,000 verifiers, the Redis memory and the
Redis CPU while idle (heartbeats and blocking reads only) summed over the three nodes.

    python bench/fanout.py                   # N = 1000, 4000
    python bench/fanout.py --sizes 1000,5000 --procs 4 --rounds 10
"""

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx

from bench.propagation import IssuerThread, percentile, split
from keyherald.redis_server import find_redis_server
from subscriber.verifier import Verifier
from tests.ha.topology import Node, _server_args, _until

AUDIENCE = "bench"


class Worker:
    def __init__(self, urls: list[str], issuer: str, pins: Any) -> None:
        self.urls, self.issuer, self.pins = urls, issuer, pins
        self.http = httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=20))
        self.verifiers: list[Verifier] = []

    async def start(self, offset_n: tuple[int, int]) -> dict[str, Any]:
        offset, n = offset_n
        gate = asyncio.Semaphore(20)
        failed = 0

        async def one(i: int) -> None:
            nonlocal failed
            async with gate:
                url = self.urls[i % len(self.urls)] + f"&client_name=fleet-{offset + i}"
                verifier = Verifier(
                    issuer=self.issuer,
                    audience=AUDIENCE,
                    redis_url=url,
                    http_client=self.http,
                    announcement_keys=self.pins,
                    snapshot_url=f"{self.issuer}/.well-known/keyherald-snapshot.jwt",
                    registry=None,
                    start_timeout_s=60,
                )
                try:
                    await verifier.start()
                except Exception:
                    failed += 1
                    return
                self.verifiers.append(verifier)

        await asyncio.gather(*(one(i) for i in range(n)))
        states: dict[str, int] = {}
        for v in self.verifiers:
            states[v.health().state] = states.get(v.health().state, 0) + 1
        return {"started": len(self.verifiers), "failed": failed, "states": states}

    async def await_version(self, version: int) -> list[float]:
        deadline = time.monotonic() + 60
        while any(v.keyset.version < version for v in self.verifiers):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        return [lag for v in self.verifiers if (lag := v.health().lag_s) is not None]

    async def errors(self, _: Any) -> dict[str, int]:
        seen: dict[str, int] = {}
        for v in self.verifiers:
            error = v.health().redis_error or v.health().heartbeat_error
            if error:
                seen[error[:60]] = seen.get(error[:60], 0) + 1
        return seen

    async def serve(self, conn: Connection) -> None:
        commands = {"start": self.start, "await_version": self.await_version,
                    "errors": self.errors}  # fmt: skip
        loop = asyncio.get_running_loop()
        try:
            while True:
                command, arg = await loop.run_in_executor(None, conn.recv)
                if command == "exit":
                    return
                conn.send(await commands[command](arg))
        finally:
            await asyncio.gather(*(v.aclose() for v in self.verifiers), return_exceptions=True)
            await self.http.aclose()


def _worker(conn: Connection, urls: list[str], issuer: str, pins: Any) -> None:
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(Worker(urls, issuer, pins).serve(conn))


def _stats(nodes: list[Node]) -> dict[str, Any]:
    out = {}
    for node in nodes:
        c = node.client()
        cpu, mem, clients = c.info("cpu"), c.info("memory"), c.info("clients")
        out[node.name] = {
            "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "memory": int(mem["used_memory"]),
            "clients": int(clients["connected_clients"]),
        }
    return out


class Fleet:
    """P worker processes; :meth:`ask` sends every worker a command and collects the replies."""

    def __init__(self, procs: int, urls: list[str], issuer: str, pins: Any) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.workers: list[Any] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, urls, issuer, pins))
            proc.start()
            self.pipes.append(parent)
            self.workers.append(proc)

    def ask(self, command: str, args: list[Any]) -> list[Any]:
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((command, arg))
        return [pipe.recv() for pipe in self.pipes]

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(("exit", None))
        for proc in self.workers:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()


HEADER = (
    f"{'N':>6} {'last p50':>9} {'last p99':>9} {'all p99':>8} {'clients p/r1/r2':>18} "
    f"{'MB/1k':>6} {'idle CPU %/1k':>13}  notes"
)


def measure(fleet: Fleet, issuer: IssuerThread, nodes: list[Node], n: int, args: Any) -> str:
    procs = len(fleet.pipes)
    shares = []
    offset = 0
    for share in split(n, procs):
        shares.append((offset, share))
        offset += share
    started = fleet.ask("start", shares)
    time.sleep(2.0)
    before = _stats(nodes)
    time.sleep(args.idle_s)
    after = _stats(nodes)
    authority = issuer.app.state.authority
    last: list[float] = []
    every: list[float] = []
    for _ in range(args.rounds):
        applied = issuer.call(authority.rotate())
        lags = [lag for reply in fleet.ask("await_version", [applied.version] * procs)
                for lag in reply]  # fmt: skip
        last.append(max(lags))
        every.extend(lags)
        retired = issuer.call(authority.retire(applied.events[-1].kid))
        fleet.ask("await_version", [retired.version] * procs)
    errors: dict[str, int] = {}
    for reply in fleet.ask("errors", [None] * procs):
        for k, v in reply.items():
            errors[k] = errors.get(k, 0) + v
    cpu = sum(after[k]["cpu_s"] - before[k]["cpu_s"] for k in after)
    memory = sum(after[k]["memory"] - args.empty[k]["memory"] for k in after)
    clients = "/".join(str(after[node.name]["clients"]) for node in nodes)
    ok = sum(s["started"] for s in started)
    per_k = 1000 / max(ok, 1)
    notes = f"started {ok}, failed {sum(s['failed'] for s in started)}"
    if errors:
        notes += f", errors {errors}"
    p50, p99 = percentile(last, 0.5) * 1e3, percentile(last, 0.99) * 1e3
    return (
        f"{n:>6} {p50:>7.1f}ms {p99:>7.1f}ms {percentile(every, 0.99) * 1e3:>6.1f}ms "
        f"{clients:>18} {memory / 1e6 * per_k:>6.1f} {cpu / args.idle_s * 100 * per_k:>13.2f}"
        f"  {notes}"
    )


def run(args: Any) -> None:
    binary = find_redis_server()
    assert binary is not None
    root = Path(tempfile.mkdtemp(prefix="keyherald-fanout-"))
    server_args = [*_server_args(), "--maxclients", "19000"]
    primary = Node(binary, root, "primary", server_args).start()
    nodes = [primary]
    try:
        for i in (1, 2):
            replica_args = [*server_args, "--replicaof", "127.0.0.1", str(primary.port)]
            nodes.append(Node(binary, root, f"replica{i}", replica_args).start())
        _until(lambda: primary.client().info("replication")["connected_slaves"] == 2, "replicas")
        base = f"redis://{primary.address}/0"
        urls = [f"{base}?replicas={nodes[1].address}", f"{base}?replicas={nodes[2].address}"]
        with IssuerThread(base) as issuer:
            pins = issuer.call(issuer.app.state.authority.announcement_jwks())
            args.empty = _stats(nodes)
            print(HEADER, flush=True)
            for n in args.sizes:
                fleet = Fleet(args.procs, urls, issuer.url, pins)
                try:
                    print(measure(fleet, issuer, nodes, n, args), flush=True)
                finally:
                    fleet.close()
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000", help="comma-separated N values")
    parser.add_argument("--procs", type=int, default=4, help="worker processes")
    parser.add_argument("--rounds", type=int, default=10, help="key-added rounds per N")
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle window for Redis CPU")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    logging.basicConfig(level=logging.ERROR)
    run(args)


if __name__ == "__main__":
    main()
