"""The few calls the demo makes to the relay's admin API."""

import asyncio
import logging
import time
from typing import Any

import httpx

from .settings import DemoSettings

logger = logging.getLogger(__name__)

retry_interval_s = 0.25
partner_description = "keyherald demo partner"


class RelayError(RuntimeError):
    """The relay refused a request, or did not answer in time."""


async def register_partner(settings: DemoSettings, url: str, *, timeout_s: float) -> str:
    """Register ``url`` for every event type and return its ``whsec_`` secret.

    A partner previously registered with the same URL is deleted first, so a restarted
    receiver does not leave a stale registration that keeps failing. Retries until the relay
    answers or ``timeout_s`` passes.

    :raises RelayError: the relay refused, or never answered.
    """
    headers = {"Authorization": f"Bearer {settings.relay_token}"}
    base = settings.demo_relay_url.rstrip("/")
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=5.0) as client:
        while True:
            try:
                await _delete_stale(client, url)
                response = await client.post(
                    "/admin/partners", json={"url": url, "description": partner_description}
                )
            except httpx.TransportError as e:
                if time.monotonic() > deadline:
                    raise RelayError(f"relay at {base} did not answer: {e}") from e
                await asyncio.sleep(retry_interval_s)
                continue
            if response.status_code >= 300:
                raise RelayError(f"relay refused the registration: {response.status_code}")
            body: dict[str, Any] = response.json()
            secret = body.get("secret")
            if not isinstance(secret, str):
                raise RelayError("relay registration answer carries no secret")
            return secret


async def _delete_stale(client: httpx.AsyncClient, url: str) -> None:
    response = await client.get("/admin/partners")
    if not response.is_success:
        return
    body = response.json()
    partners = body.get("partners", body) if isinstance(body, dict) else body
    for partner in partners if isinstance(partners, list) else []:
        if isinstance(partner, dict) and partner.get("url") == url and "id" in partner:
            await client.delete(f"/admin/partners/{partner['id']}")
            logger.info("deleted stale registration %s", partner["id"])
