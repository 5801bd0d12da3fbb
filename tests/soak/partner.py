"""A partner's webhook receiver for the soak, in a process of its own so it can be taken down.

``python -m tests.soak.partner --port P --secrets FILE --inbox FILE``: verifies each delivery
with the ``standardwebhooks`` reference library against any secret listed in ``--secrets`` (one
per line, re-read per request: the soak re-registers the partner after a Redis flush) and
appends one JSON line per accepted delivery to ``--inbox``, which outlives the process. Before
answering it waits ``delay_s`` (``POST /control``), which is how the soak catches the relay in
the middle of a delivery; a ``"start"`` line is written when a request arrives.
"""

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def summarise(webhook_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The fields the soak checks, from a relay payload (``relay.keysource.payload``)."""
    data = payload.get("data") or {}
    event = data.get("event") or {}
    jwks = data.get("jwks") or {}
    return {
        "webhook_id": webhook_id,
        "type": event.get("type"),
        "version": event.get("version"),
        "epoch": event.get("epoch"),
        "kid": event.get("kid"),
        "set_version": data.get("version"),
        "set_epoch": data.get("epoch"),
        "set_kids": sorted(k.get("kid") for k in jwks.get("keys", []) if isinstance(k, dict)),
    }


def create_app(secrets_path: Path, inbox_path: Path) -> FastAPI:
    app = FastAPI()
    control = {"delay_s": 0.0}

    def append(record: dict[str, Any]) -> None:
        with inbox_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    @app.post("/webhook")
    async def receive(request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        webhook_id = headers.get("webhook-id", "")
        append({"phase": "start", "webhook_id": webhook_id, "at": time.time()})
        payload = None
        for secret in secrets_path.read_text().split():
            try:
                payload = Webhook(secret).verify(body, headers)
                break
            except WebhookVerificationError:
                continue
        if payload is None:
            append({"phase": "refused", "webhook_id": webhook_id, "at": time.time()})
            return Response(status_code=400)
        if control["delay_s"] > 0:
            await asyncio.sleep(control["delay_s"])
        append({"phase": "received", "at": time.time(), **summarise(webhook_id, payload)})
        return Response(status_code=204)

    @app.post("/control")
    async def set_control(body: dict[str, float]) -> dict[str, float]:
        control["delay_s"] = float(body.get("delay_s", 0.0))
        return control

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secrets", type=Path, required=True)
    parser.add_argument("--inbox", type=Path, required=True)
    args = parser.parse_args()
    app = create_app(args.secrets, args.inbox)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
