"""A TCP proxy on 127.0.0.1 that loses one reply: the first one to a request containing
``marker`` is never forwarded, and both connections are closed instead. The server did the
work; its client sees the connection drop (a lost reply, as after a timeout or a crash)."""

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress

from tests.proxy import TcpProxy


class ReplyDroppingProxy(TcpProxy):
    """``async with ReplyDroppingProxy(port, b"POST /admin/rotate") as proxy:`` forwards
    ``proxy.port`` to ``target_port``; :attr:`dropped` is set once a reply was lost.

    :param armed: ``False``: forward everything until :meth:`arm` is called.
    """

    def __init__(self, target_port: int, marker: bytes, *, armed: bool = True) -> None:
        super().__init__(target_port)
        self._marker = marker
        self._armed = armed
        self.dropped = asyncio.Event()

    def arm(self) -> None:
        """Lose the reply to the next request that contains the marker."""
        self._armed = True

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()  # the target is down: so is the proxy, as the client sees it
            return
        marked = asyncio.Event()

        async def upstream() -> None:
            tail = b""
            while chunk := await reader.read(65536):
                if self._armed and self._marker in tail + chunk:
                    self._armed = False
                    marked.set()
                tail = chunk[-len(self._marker) :]
                up_writer.write(chunk)
                await up_writer.drain()

        async def downstream() -> None:
            while chunk := await up_reader.read(65536):
                if marked.is_set():
                    self.dropped.set()
                    return  # the reply goes nowhere; both ends are closed below
                writer.write(chunk)
                await writer.drain()

        async def run(pipe: Callable[[], Awaitable[None]]) -> None:
            with suppress(ConnectionError, asyncio.CancelledError):
                await pipe()
            for end in (writer, up_writer):
                end.close()

        for pipe in (upstream, downstream):
            self._spawn(run(pipe))
