"""Key propagation: issuer commit (``key-added`` XADD) to the key being in N verifiers' caches.

Runs everything on this machine in one go:

- a private ``redis-server`` (keyherald.redis_server.RedisServer);
- the real issuer app, served by uvicorn on 127.0.0.1 (verifiers bootstrap from its JWKS);
- two worker processes holding N verifiers between them (N = 1, 10, 100, 1000);
- for comparison, the same two processes holding N raw redis-py ``XREAD`` readers on the
  same stream, timed from the same ``ts`` to the moment the reply is in (no signature check,
  no key parsing: the floor a verifier cannot beat).

Per N it prints p50/p99 of the propagation time (over every verifier and every round) and
the ratio to raw fan-out. The rounds run in blocks that alternate verifiers and raw readers,
so slow spells of a shared machine land on both. Latency is measured against the wall clock
of one machine: the issuer stamps ``ts`` when it commits, each verifier records when it
applied the event.

    python bench/propagation.py            # N = 1, 10, 100, 1000
    python bench/propagation.py --quick    # N = 1, 10, a few rounds (a smoke run)
"""

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keyherald.redis_server import RedisServer, free_port
from subscriber.cancellation import raise_if_cancelled
from subscriber.jws import b64url_decode
from subscriber.redis_conn import connect
from subscriber.redis_keys import event_stream
from subscriber.verifier import Verifier

AUDIENCE = "bench"


# -- worker processes -------------------------------------------------------------------------


class Worker:
    """One process's share: N verifiers, or N raw readers, driven by commands on a pipe."""

    def __init__(self, redis_url: str, issuer: str, pins: Any) -> None:
        self.issuer, self.pins = issuer, pins
        self.stream = event_stream(issuer)
        self.http = httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=50))
        self.clients = connect(redis_url, max_connections=4_000)  # as the services build
        self.redis = self.clients.primary
        self.verifiers: list[Verifier] = []
        self.readers: list[asyncio.Task[None]] = []
        self.raw_latencies: list[float] = []

    async def start_verifiers(self, n: int) -> str:
        gate = asyncio.Semaphore(50)  # bootstrap fetches, not all at once

        async def start_one() -> Verifier:
            async with gate:
                verifier = Verifier(
                    issuer=self.issuer,
                    audience=AUDIENCE,
                    redis=self.redis,
                    http_client=self.http,
                    announcement_keys=self.pins,
                    snapshot_url=f"{self.issuer}/.well-known/keyherald-snapshot.jwt",
                    presence=False,
                    registry=None,
                )
                await verifier.start()
                return verifier

        self.verifiers = list(await asyncio.gather(*(start_one() for _ in range(n))))
        return "ready"

    async def await_version(self, version: int) -> list[float]:
        # Each verifier records its own lag when it applies the event; this only waits.
        while any(v.keyset.version < version for v in self.verifiers):
            await asyncio.sleep(0.002)
        return [lag for v in self.verifiers if (lag := v.health().lag_s) is not None]

    async def raw_reader(self, start_id: bytes) -> None:
        last = start_id
        while True:
            reply = await self.redis.xread({self.stream: last}, block=1_000)
            now = time.time()  # the reply is in: that is all a raw reader does
            raise_if_cancelled()
            for _stream, entries in reply.items() if isinstance(reply, dict) else reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields[b"type"] == b"key-added":
                        payload = json.loads(b64url_decode(fields[b"jws"].decode().split(".")[1]))
                        self.raw_latencies.append(now - payload["ts"])

    async def start_readers(self, n: int) -> str:
        self.raw_latencies.clear()
        newest = await self.redis.xrevrange(self.stream, count=1)
        start_id = newest[0][0] if newest else b"0-0"
        self.readers = [asyncio.create_task(self.raw_reader(start_id)) for _ in range(n)]
        await asyncio.sleep(0.2)  # let every reader block in XREAD
        return "ready"

    async def await_raw(self, n: int) -> list[float]:
        while len(self.raw_latencies) < n:
            await asyncio.sleep(0.002)
        latencies, self.raw_latencies = self.raw_latencies, []
        return latencies

    async def reset(self, _: Any = None) -> str:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(v.aclose() for v in self.verifiers))
        self.verifiers, self.readers = [], []
        return "ok"

    async def serve(self, conn: Connection) -> None:
        commands = {
            "verifiers": self.start_verifiers,
            "await_version": self.await_version,
            "raw": self.start_readers,
            "await_raw": self.await_raw,
            "reset": self.reset,
        }
        loop = asyncio.get_running_loop()
        try:
            while True:
                command, arg = await loop.run_in_executor(None, conn.recv)
                if command == "exit":
                    return
                conn.send(await commands[command](arg))
        finally:
            await self.reset()
            await self.clients.aclose()
            await self.http.aclose()


def _worker(conn: Connection, redis_url: str, issuer: str, pins: Any) -> None:
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(Worker(redis_url, issuer, pins).serve(conn))


# -- the issuer, served in a thread ------------------------------------------------------------


class IssuerThread:
    """The real issuer app on uvicorn, with its own event loop in a thread."""

    def __init__(self, redis_url: str) -> None:
        from issuer import create_app
        from issuer.settings import IssuerSettings

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        kek = base64.b64encode(os.urandom(32)).decode()
        settings = IssuerSettings(issuer=self.url, kek=kek, redis_url=redis_url)  # type: ignore[arg-type]
        self.app = create_app(settings=settings, run_scheduler=False)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", backlog=4096)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def __enter__(self) -> "IssuerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("issuer did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


# -- the benchmark -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class Fleet:
    """The two worker processes; :meth:`ask` sends each its share of a command."""

    def __init__(self, redis_url: str, issuer: str, pins: Any) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(2):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, redis_url, issuer, pins))
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def ask(self, command: str, args: list[Any]) -> list[Any]:
        """Send ``command`` with ``args[i]`` to worker ``i`` (``None`` skips it); collect."""
        busy = [(pipe, arg) for pipe, arg in zip(self.pipes, args, strict=True) if arg is not None]
        for pipe, arg in busy:
            pipe.send((command, arg))
        return [pipe.recv() for pipe, _ in busy]

    def close(self) -> None:
        # A worker that died (its error is on stderr) must not leave the others running:
        # multiprocessing would wait for them forever at exit.
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", None))
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()


def measure(fleet: Fleet, issuer: IssuerThread, n: int, rounds: int, *, raw: bool) -> list[float]:
    """Propagation times (seconds) of ``rounds`` key-added events to ``n`` verifiers (or raw
    readers), spread over the two workers."""
    authority = issuer.app.state.authority
    shares = [share or None for share in split(n, 2)]
    fleet.ask("raw" if raw else "verifiers", shares)
    latencies: list[float] = []
    for _ in range(rounds):
        applied = issuer.call(authority.rotate())
        waits = shares if raw else [applied.version if share else None for share in shares]
        for reply in fleet.ask("await_raw" if raw else "await_version", waits):
            latencies.extend(reply)
        # Withdraw the key again, so every round adds one pending key to the same key set,
        # and let that event settle everywhere: the next round must not queue behind it.
        retired = issuer.call(authority.retire(applied.events[-1].kid))
        if not raw:
            fleet.ask("await_version", [retired.version if share else None for share in shares])
        time.sleep(0.02 + n * 0.0005)
    fleet.ask("reset", [True if share else None for share in shares])
    return latencies


def run(sizes: list[int], rounds: int, blocks: int) -> None:
    with RedisServer(persistence="none") as server, IssuerThread(server.url) as issuer:
        pins = issuer.call(issuer.app.state.authority.announcement_jwks())
        fleet = Fleet(server.url, issuer.url, pins)
        print(f"{'N':>6} {'p50 ms':>9} {'p99 ms':>9} {'raw p50':>9} {'raw p99':>9} "
              f"{'p50 x':>7} {'p99 x':>7}")  # fmt: skip
        try:
            for n in sizes:
                lags, raw = [], []
                # Blocks alternate (verifiers, raw, raw, verifiers, ...) so a noisy spell on
                # this shared machine falls on both sides, not on whichever ran second.
                for block in range(blocks):
                    share = rounds // blocks + (1 if block < rounds % blocks else 0)
                    for is_raw in (False, True) if block % 2 == 0 else (True, False):
                        got = measure(fleet, issuer, n, share, raw=is_raw)
                        (raw if is_raw else lags).extend(got)
                p50, p99 = percentile(lags, 0.5) * 1e3, percentile(lags, 0.99) * 1e3
                r50, r99 = percentile(raw, 0.5) * 1e3, percentile(raw, 0.99) * 1e3
                print(f"{n:>6} {p50:>9.3f} {p99:>9.3f} {r50:>9.3f} {r99:>9.3f} "
                      f"{p50 / r50:>7.2f} {p99 / r99:>7.2f}", flush=True)  # fmt: skip
        finally:
            fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 10 and 3 rounds")
    parser.add_argument("--sizes", default="1,10,100,1000", help="comma-separated N values")
    parser.add_argument("--rounds", type=int, default=40, help="rotations per N")
    parser.add_argument(
        "--blocks", type=int, default=4, help="alternating verifier/raw blocks of the rounds"
    )
    args = parser.parse_args()
    sizes = [1, 10] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 3 if args.quick else args.rounds
    blocks = 1 if args.quick else max(1, min(args.blocks, rounds))
    logging.basicConfig(level=logging.ERROR)
    print(f"propagation of key-added to N verifiers, {rounds} rounds in {blocks} alternating "
          f"blocks, 2 worker processes, {os.cpu_count()} CPUs")  # fmt: skip
    run(sizes, rounds, blocks)


if __name__ == "__main__":
    main()
