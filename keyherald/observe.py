"""Read-only views of a running keyherald system, for ``keyherald status`` and the demo.

- :class:`IssuerClient`: the issuer's metadata, JWKS and admin API (keys, plan, revoke).
- :func:`read_heartbeats`: which verifier instances are live and which keys each holds.
- :class:`EventTail`: the issuer's stream, each entry verified against the announcement keys.
"""

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import httpx
import redis.asyncio as aioredis

from subscriber.constants import JWKS_PATH, METADATA_PATH
from subscriber.errors import EventError
from subscriber.events import Event, StreamFields, load_announcement_keys, parse_event
from subscriber.redis_keys import event_stream, verifier_index, verifier_states

logger = logging.getLogger(__name__)

#: One XREAD reply: [(stream, [(entry id, fields), ...])].
XReadReply = list[tuple[bytes, list[tuple[bytes, StreamFields]]]]


class IssuerUnavailable(RuntimeError):
    """The issuer did not answer, or answered with an error."""


class AdminRefused(IssuerUnavailable):
    """The admin API answered 401/403: no admin token, or not the issuer's."""


def _records(body: Any, member: str) -> list[dict[str, Any]]:
    items = body.get(member, []) if isinstance(body, dict) else body
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


class IssuerClient:
    """The HTTP calls an operator tool makes to the issuer.

    :param issuer: the issuer URL (``iss``, also its base URL).
    :param admin_token: bearer token of ``/admin``; needed for keys, plan and revoke.
    """

    def __init__(
        self, issuer: str, *, admin_token: str = "", client: httpx.AsyncClient | None = None
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._own_client = client is None
        self._admin = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> "IssuerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get(self, path: str, *, admin: bool = False) -> Any:
        try:
            response = await self._client.get(
                self.issuer + path, headers=self._admin if admin else None
            )
            if admin and response.status_code in (401, 403):
                raise AdminRefused(
                    "the admin API refused the admin token (401): check KEYHERALD_ADMIN_TOKEN "
                    "or --admin-token"
                    if self._admin
                    else "the admin API needs an admin token: set KEYHERALD_ADMIN_TOKEN or "
                    "pass --admin-token"
                )
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as e:
            raise IssuerUnavailable(f"GET {self.issuer}{path} failed: {e}") from e

    async def metadata(self) -> dict[str, Any]:
        """The openid-configuration document."""
        body = await self._get(METADATA_PATH)
        if not isinstance(body, dict):
            raise IssuerUnavailable("the issuer metadata is not a JSON object")
        return body

    async def jwks(self) -> dict[str, Any]:
        """The served JWKS (with its ``keyherald`` member: version, epoch, states)."""
        body = await self._get(JWKS_PATH)
        if not isinstance(body, dict):
            raise IssuerUnavailable("the JWKS is not a JSON object")
        return body

    async def keys(self) -> list[dict[str, Any]]:
        """``GET /admin/keys``: every key record with its state and timestamps."""
        return _records(await self._get("/admin/keys", admin=True), "keys")

    async def plan(self) -> list[dict[str, Any]]:
        """``GET /admin/plan``: the upcoming transitions."""
        return _records(await self._get("/admin/plan", admin=True), "transitions")

    async def revoke(self, kid: str) -> dict[str, Any]:
        """``POST /admin/keys/{kid}/revoke``: emergency removal.

        Sent under a fresh ``Idempotency-Key``, and sent once more under the same key when the
        connection fails: a revocation whose answer was lost is answered, not made twice.
        """
        url = f"{self.issuer}/admin/keys/{kid}/revoke"
        headers = {**self._admin, "Idempotency-Key": str(uuid.uuid4())}
        try:
            try:
                response = await self._client.post(url, headers=headers)
            except httpx.TransportError as e:
                logger.warning("revoking %s: %s; retrying under the same Idempotency-Key", kid, e)
                response = await self._client.post(url, headers=headers)
            response.raise_for_status()
        except httpx.HTTPError as e:
            raise IssuerUnavailable(f"revoking {kid} failed: {e}") from e
        body = response.json() if response.content else {}
        return body if isinstance(body, dict) else {}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One live verifier instance, as its last heartbeat describes it."""

    instance_id: str
    service: str
    state: str
    version: int | None
    kids: dict[str, float]
    lag_ms: float | None
    updated_at: float | None
    record: dict[str, Any]


async def read_heartbeats(
    redis: aioredis.Redis, issuer: str, *, now: float | None = None
) -> list[Heartbeat]:
    """Every verifier instance whose heartbeat has not expired, sorted by service and id."""
    now_ms = int((time.time() if now is None else now) * 1000)
    ids = cast(list[bytes], await redis.zrangebyscore(verifier_index(issuer), now_ms, "+inf"))
    if not ids:
        return []
    raw = cast(list[bytes | None], await redis.hmget(verifier_states(issuer), ids))
    beats = []
    for instance, value in zip(ids, raw, strict=True):
        if value is None:
            continue
        try:
            record = json.loads(value)
        except ValueError:
            logger.warning("unreadable heartbeat record for %r", instance)
            continue
        if not isinstance(record, dict):
            continue
        kids = record.get("kids") or {}
        beats.append(
            Heartbeat(
                instance_id=str(record.get("instance_id", _text(instance))),
                service=str(record.get("service", "?")),
                state=str(record.get("state", "?")),
                version=record.get("version"),
                kids=dict(kids) if isinstance(kids, dict) else {k: 0.0 for k in kids},
                lag_ms=record.get("lag_ms"),
                updated_at=record.get("updated_at"),
                record=record,
            )
        )
    return sorted(beats, key=lambda b: (b.service, b.instance_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class EventTail:
    """Follows the issuer's stream from the start, verifying every entry.

    Entries that fail verification are counted in :attr:`refused` and never returned.
    """

    def __init__(self, redis: aioredis.Redis, issuer: str, announcement_jwks: list[Any]) -> None:
        self.redis = redis
        self.issuer = issuer
        self.stream = event_stream(issuer)
        self.keys = load_announcement_keys(announcement_jwks)
        self.last_id = "0-0"
        self.refused = 0

    @classmethod
    async def for_issuer(cls, redis: aioredis.Redis, client: IssuerClient) -> "EventTail":
        """Trust the announcement keys the issuer serves in its metadata."""
        meta = await client.metadata()
        ext = meta.get("keyherald") or {}
        return cls(redis, client.issuer, list(ext.get("announcement_keys") or []))

    async def poll(self, block_ms: int | None = None) -> list[Event]:
        """New events since the last call (waits up to ``block_ms`` if given)."""
        reply = cast(
            XReadReply,
            await self.redis.xread({self.stream: self.last_id}, count=1000, block=block_ms),
        )
        events = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = _text(entry_id)
                try:
                    events.append(parse_event(fields, self.keys, issuer=self.issuer))
                except EventError as e:
                    self.refused += 1
                    logger.warning("refused stream entry %s: %s", self.last_id, e.reason)
        return events
