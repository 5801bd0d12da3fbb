"""``SyncVerifier``: the :class:`~subscriber.verifier.Verifier` for WSGI and other sync code.

The same core, not a copy: a :class:`Verifier` runs on a private event loop in a daemon
thread (stream follower, poller, heartbeat), and :meth:`SyncVerifier.verify` calls the core's
``verify`` directly on the caller's thread. That is safe because verification only reads one
immutable key-set snapshot and the loop replaces it in a single assignment::

    with SyncVerifier(issuer="https://id.example.com", audience="orders-api",
                      redis_url="redis://127.0.0.1:6379/0") as verifier:
        claims = verifier.verify(token)
"""

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from .health import Health
from .verifier import Verifier

#: How long :meth:`SyncVerifier.start` and :meth:`SyncVerifier.close` wait for the loop.
start_timeout_s = 30.0


class SyncVerifier:
    """A :class:`Verifier` driven from a background thread.

    Takes the same keyword arguments as :class:`Verifier`, except ``redis`` and
    ``http_client``: asyncio clients are bound to one event loop, and this one is private.
    Pass ``redis_url`` (and let it create its own HTTP client).
    """

    def __init__(self, **options: Any) -> None:
        for name in ("redis", "http_client"):
            if options.get(name) is not None:
                raise ValueError(
                    f"SyncVerifier cannot share an asyncio {name}: it runs its own event loop"
                )
        # Build (and so validate) the core now, on the caller's thread: it does no I/O yet.
        self._verifier = Verifier(**options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "SyncVerifier":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the loop thread and bootstrap; returns once the key set is loaded.

        :raises FetchError: the issuer's metadata or JWKS could not be fetched.
        """
        if self._thread is not None:
            raise RuntimeError("a SyncVerifier can be started once")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="keyherald-sync-verifier", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._verifier.start())
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=start_timeout_s)

    def close(self) -> None:
        """Stop the background work, close the clients, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            self._call(self._verifier.aclose())
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=start_timeout_s)
        loop.close()
        self._loop = None

    def verify(self, token: str) -> dict[str, Any]:
        """Verify ``token`` and return its claims; see :meth:`Verifier.verify`.

        :raises InvalidToken: a subclass whose ``reason`` says why.
        """
        return self._verifier.verify(token)

    def health(self) -> Health:
        """See :meth:`Verifier.health`."""
        return self._verifier.health()

    @property
    def verifier(self) -> Verifier:
        """The async core (for its key set and metrics); do not await it from this thread."""
        return self._verifier
