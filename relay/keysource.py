"""The partner payload: the event plus the issuer's complete current key set.

The key set is the issuer's JWKS document itself (``keys`` and the ``keyherald`` member with
``version``, ``epoch`` and ``states``), fetched conditionally with the subscriber's
:class:`~subscriber.jwks_client.JwksClient`, so an unchanged set costs a ``304``. A relay
replica only sees the stream entries its consumer-group share hands it, so it cannot rebuild
the set from events; the JWKS is the one complete, authoritative view. A document older than
the event being delivered (a cache between us and the issuer) fails the attempt, which is
retried, rather than sending a partner a set that lacks the announced key.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from subscriber.errors import FetchError
from subscriber.jwks_client import JwksClient

from .errors import DeliveryFailed
from .items import Item

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """One JWKS document with its ``keyherald`` version and epoch."""

    doc: Mapping[str, Any]
    version: int
    epoch: str


class KeySource(Protocol):
    """Where the relay gets the current key set (an issuer's JWKS, or a test double)."""

    async def snapshot(self) -> KeySnapshot:
        """The current key set.

        :raises DeliveryFailed: ``stale_keys`` when it cannot be had.
        """
        ...


def snapshot_of(doc: Mapping[str, Any]) -> KeySnapshot:
    """Check a JWKS document's shape.

    :raises DeliveryFailed: ``stale_keys`` when ``keys`` or the ``keyherald`` member is missing.
    """
    member = doc.get("keyherald")
    keys = doc.get("keys")
    if not isinstance(member, Mapping) or not isinstance(keys, list):
        raise DeliveryFailed("JWKS has no keyherald member", reason="stale_keys")
    version, epoch = member.get("version"), member.get("epoch")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(epoch, str):
        raise DeliveryFailed("JWKS keyherald member lacks version/epoch", reason="stale_keys")
    return KeySnapshot(doc, version, epoch)


class JwksKeySource:
    """:class:`KeySource` over an issuer's JWKS endpoint."""

    def __init__(self, client: JwksClient) -> None:
        self._client = client

    async def snapshot(self) -> KeySnapshot:
        try:
            response = await self._client.fetch_jwks()
        except FetchError as e:
            raise DeliveryFailed("issuer JWKS unavailable", reason="stale_keys") from e
        return snapshot_of(response.doc)


async def current_for(source: KeySource, item: Item) -> KeySnapshot:
    """A key set at least as new as ``item``'s event, from the same epoch.

    :raises DeliveryFailed: ``stale_keys``.
    """
    snap = await source.snapshot()
    if snap.epoch != item.event.get("epoch") or snap.version < item.version:
        raise DeliveryFailed(
            f"JWKS at {snap.epoch}.{snap.version} is behind event version {item.version}",
            reason="stale_keys",
        )
    return snap


def payload(item: Item, keys: KeySnapshot, items: Sequence[Item] = ()) -> bytes:
    """The webhook body, in Standard Webhooks' ``{type, timestamp, data}`` shape.

    ``data.event`` is the verified announcement, ``data.jws`` the issuer-signed original (a
    partner may check it against the announcement keys), ``data.jwks`` the full key set and
    ``data.version`` its version. ``data.events`` lists every event the delivery stands for
    (``items``, default ``item`` alone; more than one only when collapsing), oldest first.
    """
    event = item.event
    body = {
        "type": f"keyherald.{event['type']}",
        "timestamp": datetime.fromtimestamp(float(event["ts"]), tz=UTC).isoformat(),
        "data": {
            "event": dict(event),
            "events": [dict(i.event) for i in (items or (item,))],
            "jws": item.jws,
            "version": keys.version,
            "epoch": keys.epoch,
            "jwks": dict(keys.doc),
        },
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
