"""Real HTTP servers for the relay tests: uvicorn on 127.0.0.1, free ports, scripted receivers."""

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from keyherald.redis_server import free_port
from tests.proxy import TcpProxy


async def until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Wait for ``condition()`` to be truthy (it may be a coroutine function), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Server:
    """``async with Server(app) as s:`` serves ``app`` on ``s.url`` until the block ends."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int | None = None, **config: Any
    ) -> None:
        self.host = host
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            timeout_graceful_shutdown=1,
            **config,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> "Server":
        self._task = asyncio.create_task(self._server.serve())
        await until(lambda: self._server.started or self._task.done(), timeout=5)
        if self._task.done():
            self._task.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        assert self._task is not None
        await self._task


@dataclass
class Reply:
    """What the receiver does with one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    #: Seconds to wait before answering (hang when large).
    delay_s: float = 0.0
    #: Send the body one byte at a time, this many seconds apart (a slow-loris receiver).
    trickle_s: float = 0.0


@dataclass
class Delivery:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    verified_by: list[int]
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def version(self) -> int:
        return int(self.json["data"]["event"]["version"])


class Receiver:
    """A partner endpoint: verifies every request with the ``standardwebhooks`` library against
    each secret it knows, records it, and answers as scripted (then 200)."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = list(secrets or [])
        self.script: list[Reply] = []
        self.got: list[Delivery] = []

    def verify(self, body: bytes, headers: dict[str, str]) -> list[int]:
        ok = []
        for i, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            ok.append(i)
        return ok

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.got if 200 <= d.status < 300]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        reply = self.script.pop(0) if self.script else Reply()
        self.got.append(Delivery(headers, body, self.verify(body, headers), reply.status))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        raw_headers = [(k.encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        if reply.trickle_s:
            for byte in reply.body:
                await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
                await asyncio.sleep(reply.trickle_s)
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": reply.body})


class FreezingProxy(TcpProxy):
    """A TCP proxy to Redis that stops forwarding a client's commands, on every connection,
    from the first one that contains ``freeze_on`` (say, the SHA of the relay's fan-out
    script). It pins a relay process at an exact step, so a test can ``kill -9`` it there."""

    def __init__(self, target_port: int, freeze_on: bytes) -> None:
        super().__init__(target_port)
        self._freeze_on = freeze_on
        self.frozen = asyncio.Event()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool):
        tail = b""
        try:
            while chunk := await reader.read(65536):
                if up and (self.frozen.is_set() or self._freeze_on in tail + chunk):
                    self.frozen.set()
                    await asyncio.Event().wait()  # hold it until the connection dies
                tail = chunk[-len(self._freeze_on) :]
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._spawn(self._pipe(reader, up_writer, up=True))
        self._spawn(self._pipe(up_reader, writer, up=False))
