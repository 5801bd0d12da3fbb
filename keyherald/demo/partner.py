"""``keyherald demo partner``: a partner's webhook receiver, as a partner would write it.

It registers itself with the relay's admin API on start (the relay shows the ``whsec_`` secret
once, in that response, and the receiver keeps it in memory only), verifies every delivery
with the ``standardwebhooks`` reference library, then checks the issuer's own signature on the
event inside it against the announcement keys from the issuer's metadata (so the relay is not
a root of trust either), and records the events in arrival order. ``GET /received`` shows what
arrived; ``GET /healthz`` answers once the receiver is registered.
"""

import argparse
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from subscriber.errors import EventError
from subscriber.events import load_announcement_keys, parse_event

from ..observe import IssuerClient
from . import relay_client
from .settings import DemoSettings

logger = logging.getLogger(__name__)

register_timeout_s = 60.0


@dataclass
class Inbox:
    """What a partner received, in arrival order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)
    verified: int = 0
    rejected: int = 0
    #: Deliveries whose inner event failed the issuer's announcement signature.
    forged_events: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    last_version: int = 0
    keys: list[str] = field(default_factory=list)
    key_set_version: int | None = None

    def record(self, webhook_id: str, summary: dict[str, Any]) -> None:
        """Record one verified delivery (a retry of a known ``webhook-id`` is a duplicate)."""
        self.verified += 1
        if webhook_id in self.seen_ids:
            self.duplicates += 1
            return
        self.seen_ids.add(webhook_id)
        version = summary["version"]
        if isinstance(version, int):
            if version <= self.last_version:
                self.out_of_order += 1
            self.last_version = max(self.last_version, version)
        if summary["keys"] is not None:
            self.keys = summary["keys"]
            self.key_set_version = summary["key_set_version"]
        self.events.append({"webhook_id": webhook_id, "received_at": time.time(), **summary})

    def snapshot(self) -> dict[str, Any]:
        """The inbox as JSON (``GET /received``)."""
        return {
            "events": [{k: v for k, v in e.items() if k != "keys"} for e in self.events],
            "delivered": len(self.events),
            "verified": self.verified,
            "rejected": self.rejected,
            "forged_events": self.forged_events,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "keys": self.keys,
            "key_set_version": self.key_set_version,
        }


def summarise(payload: dict[str, Any]) -> dict[str, Any]:
    """The fields a partner cares about, from a relay delivery.

    The relay sends Standard Webhooks' ``{type, timestamp, data}`` shape, with ``data.event``
    the announcement, ``data.jws`` the issuer-signed original, and ``data.jwks`` plus
    ``data.version`` the complete current key set.
    """
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    assert isinstance(data, dict)
    event = data.get("event") if isinstance(data.get("event"), dict) else {}
    assert isinstance(event, dict)
    jwks = data.get("jwks") if isinstance(data.get("jwks"), dict) else {}
    assert isinstance(jwks, dict)
    key_list = jwks.get("keys")
    keys = (
        [str(k.get("kid")) for k in key_list if isinstance(k, dict)]
        if isinstance(key_list, list)
        else None
    )
    return {
        "type": event.get("type"),
        "version": event.get("version"),
        "kid": event.get("kid"),
        "keys": keys,
        "key_set_version": data.get("version"),
    }


def create_app(settings: DemoSettings, public_url: str) -> FastAPI:
    """The receiver app; it registers ``public_url`` with the relay during start-up."""
    inbox = Inbox()
    webhook: list[Webhook] = []
    announcement_keys: dict[str, Ed25519PublicKey] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with IssuerClient(settings.issuer) as issuer:
            meta = await issuer.metadata()
        ext = meta.get("keyherald") or {}
        announcement_keys.update(load_announcement_keys(ext.get("announcement_keys") or []))
        secret = await relay_client.register_partner(
            settings, public_url, timeout_s=register_timeout_s
        )
        webhook.append(Webhook(secret))
        logger.info("registered with the relay as %s", public_url)
        yield

    def issuer_signed(payload: dict[str, Any]) -> bool:
        data = payload.get("data")
        jws = data.get("jws") if isinstance(data, dict) else None
        if not isinstance(jws, str):
            return False
        try:
            parse_event({"jws": jws}, announcement_keys, issuer=settings.issuer)
        except EventError:
            return False
        return True

    app = FastAPI(title="keyherald demo partner", lifespan=lifespan)

    @app.post("/webhook")
    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            payload = webhook[0].verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError, IndexError) as e:
            inbox.rejected += 1
            logger.warning("delivery refused: %s", e)
            return Response(status_code=400)
        if not issuer_signed(payload):
            # Authentic from the relay, but not an event the issuer signed: never trust it.
            inbox.forged_events += 1
            logger.warning("delivery carries an event the issuer did not sign")
            return Response(status_code=204)
        inbox.record(request.headers.get("webhook-id", ""), summarise(payload))
        return Response(status_code=204)

    @app.get("/received")
    async def received() -> dict[str, Any]:
        return inbox.snapshot()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "delivered": len(inbox.events)}

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8003, help="port (default 8003)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    # One log line per request would bury everything else in the demo's logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    settings = DemoSettings.load()
    public_url = settings.demo_partner_url or f"http://127.0.0.1:{args.port}/webhook"
    app = create_app(settings, public_url)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
