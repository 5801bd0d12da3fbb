"""TCP proxies on 127.0.0.1 that tests put between a client and a real server to make a fault
happen at an exact step: :class:`TcpProxy` owns the listening socket, the URL and the
connection tasks; a subclass decides what each connection does (``_connect``)."""

import asyncio
from collections.abc import Coroutine
from typing import Any, Self

from keyherald.redis_server import free_port


class TcpProxy:
    """``async with Proxy(target_port, ...) as proxy:`` listens on ``proxy.port``; every task a
    connection spawns (:meth:`_spawn`) is cancelled on exit."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """As a Redis URL (when the target is a Redis)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
