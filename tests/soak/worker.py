"""A verifier worker process for the soak: several :class:`subscriber.Verifier` instances in one
process, reachable over HTTP so the load generator can pick any of them.

``python -m tests.soak.worker --port P --instances N`` (connection settings from
``KEYHERALD_REDIS_URL``, ``KEYHERALD_ISSUER``, ``KEYHERALD_SOAK_AUDIENCE``):

- ``POST /verify`` ``{"instance": i, "token": "..."}`` -> ``{"ok": true}`` or
  ``{"ok": false, "reason": "..."}``: ``Verifier.verify`` itself, no other logic;
- ``GET /state``: per instance, the health, the kid -> first-held times the verifier records
  itself, and the time a watcher in this process first saw each kid refused as gone;
- ``GET /healthz``: 200 once every instance has started.

Each instance has its own Redis client (socket timeout from ``--socket-timeout``), so a paused
Redis times out per instance exactly as it would in separate services.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel

from subscriber.errors import InvalidToken
from subscriber.verifier import Verifier

logger = logging.getLogger(__name__)

#: How often the watcher samples each instance's key set for revocation timing.
watch_interval_s = 0.002


class VerifyRequest(BaseModel):
    instance: int
    token: str


class Worker:
    """The verifier instances of this process and what the watcher saw."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.verifiers: list[Verifier] = []
        self.clients: list[aioredis.Redis] = []
        #: per instance: kid -> first time the watcher saw it gone (revoked or retired).
        self.gone_at: list[dict[str, float]] = []
        self.started = False

    async def start(self) -> None:
        a = self.args
        for i in range(a.instances):
            client = aioredis.Redis.from_url(
                os.environ["KEYHERALD_REDIS_URL"],
                socket_timeout=a.socket_timeout,
                socket_connect_timeout=a.socket_timeout,
            )
            verifier = Verifier(
                issuer=os.environ["KEYHERALD_ISSUER"],
                audience=os.environ.get("KEYHERALD_SOAK_AUDIENCE", "soak-api"),
                redis=client,
                leeway_s=a.leeway,
                block_ms=a.block_ms,
                min_poll_interval_s=a.poll_interval,
                max_poll_interval_s=max(a.poll_interval, 5.0),
                heartbeat_interval_s=a.heartbeat,
                heartbeat_ttl_s=a.heartbeat * 3,
                service=f"{a.name}-{i}",
                registry=None,
            )
            await verifier.start()
            self.clients.append(client)
            self.verifiers.append(verifier)
            self.gone_at.append({})
        self.started = True

    async def watch(self) -> None:
        while True:
            now = time.time()
            for verifier, gone_at in zip(self.verifiers, self.gone_at, strict=True):
                for kid in verifier.keyset.view.gone:
                    gone_at.setdefault(kid, now)
            await asyncio.sleep(watch_interval_s)

    async def aclose(self) -> None:
        for verifier in self.verifiers:
            await verifier.aclose()
        for client in self.clients:
            await client.aclose()

    def state(self) -> dict[str, Any]:
        out = []
        for verifier, gone_at in zip(self.verifiers, self.gone_at, strict=True):
            health = verifier.health()
            view = verifier.keyset.view
            out.append(
                {
                    "instance_id": verifier.instance_id,
                    "state": health.state,
                    "version": view.version,
                    "epoch": view.epoch,
                    "keys": sorted(view.keys),
                    "first_held": dict(view.first_held),
                    "gone_at": dict(gone_at),
                }
            )
        return {"name": self.args.name, "pid": os.getpid(), "instances": out}


def create_app(worker: Worker) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        watcher = asyncio.create_task(worker.watch())
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await worker.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/verify")
    async def verify(body: VerifyRequest) -> dict[str, Any]:
        try:
            worker.verifiers[body.instance].verify(body.token)
        except InvalidToken as e:
            return {"ok": False, "reason": e.reason}
        return {"ok": True}

    @app.get("/state")
    async def state() -> dict[str, Any]:
        return worker.state()

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(status_code=200 if worker.started else 503)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--socket-timeout", type=float, default=5.0)
    parser.add_argument("--block-ms", type=int, default=2_000)
    parser.add_argument("--leeway", type=float, default=1.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(Worker(args)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
