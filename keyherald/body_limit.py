"""A request-body cap for the services' HTTP apps (issuer and relay), enforced before anything
reads the body or checks the admin token.

FastAPI reads and buffers a request's whole body before it resolves dependencies such as the
bearer-token check, so without a cap a client holding no token can make a service hold as
much memory as it cares to send. :class:`BodyLimit` answers ``413`` at once when
``Content-Length`` is over the cap (not a byte of the body is read), and counts the bytes of a
body sent without one (chunked), answering ``413`` as soon as they pass the cap.

Plain ASGI with no framework import, so every service can mount it without importing
another's internals::

    app.add_middleware(BodyLimit, max_bytes=admin_body_max_bytes)
"""

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Admin requests are a few hundred bytes of JSON; this leaves ample room.
admin_body_max_bytes: Final = 64 * 1024


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than ``max_bytes`` with ``413``.

    :param app: the application to protect.
    :param max_bytes: the largest body accepted.
    :raises ValueError: ``max_bytes`` below 1.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = admin_body_max_bytes) -> None:
        if max_bytes < 1:
            raise ValueError(f'body cap must be >= 1 byte, the input is "{max_bytes}"')
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = _content_length(scope)
        except ValueError:
            await _answer(send, 400, "invalid Content-Length header", "bad_content_length")
            return
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        refused = started = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    # The app sees a client that went away and stops reading.
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return  # whatever the app answers to a cut-off body, the 413 was the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send: Send) -> None:
        await _answer(
            send,
            413,
            f"request body is larger than {self.max_bytes} bytes",
            "body_too_large",
        )


def _content_length(scope: Scope) -> int | None:
    """The declared body length, ``None`` when not declared.

    :raises ValueError: a value that is not one non-negative integer.
    """
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
    if not values:
        return None
    if len(set(values)) > 1 or not values[0].strip().isdigit():
        raise ValueError("invalid Content-Length")
    return int(values[0])


async def _answer(send: Send, status: int, detail: str, error: str) -> None:
    body = json.dumps({"detail": detail, "error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not wanted: close instead of draining it.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
