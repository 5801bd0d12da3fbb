"""The partner payload: the event plus the issuer's complete current key set.

The key set comes from the issuer's signed key-set snapshot (:mod:`subscriber.history`),
verified against the announcement keys before anything of it is used: Redis, and whatever sits
between the relay and the issuer, is not trusted. Partners get it as a JWKS document (``keys``
and the ``keyherald`` member with ``version``, ``epoch``, ``digest`` and ``states``) and as the
signed snapshot itself (``data.snapshot``), which they can check against the same keys. A relay
replica only sees the stream entries its consumer-group share hands it, so it cannot rebuild
the set from events; the snapshot is the one complete, authoritative view. A set older than the
event being delivered fails the attempt, which is retried, rather than sending a partner a set
that lacks the announced key.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from subscriber.clock import Clock, system_clock
from subscriber.errors import EventError, FetchError
from subscriber.history import parse_snapshot
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
    #: The issuer-signed snapshot the set was read from, when it came from one.
    token: str | None = None


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


class SnapshotKeySource:
    """:class:`KeySource` over the issuer's signed key-set snapshot.

    :param announce_keys: the keys the snapshot must be signed by; read at each fetch (the
        consumer adds keys to this mapping in place when the issuer's metadata lists new ones).
    """

    def __init__(
        self,
        client: JwksClient,
        issuer: str,
        announce_keys: Mapping[str, Ed25519PublicKey],
        *,
        clock: Clock = system_clock,
        leeway_s: float = 60.0,
    ) -> None:
        self._client = client
        self._issuer = issuer
        self._keys = announce_keys
        self._clock = clock
        self._leeway_s = leeway_s

    async def snapshot(self) -> KeySnapshot:
        try:
            response = await self._client.fetch_snapshot()
            snap = parse_snapshot(
                response.token,
                self._keys,
                issuer=self._issuer,
                now=self._clock(),
                leeway_s=self._leeway_s,
            )
        except FetchError as e:
            raise DeliveryFailed("issuer snapshot unavailable", reason="stale_keys") from e
        except EventError as e:
            logger.warning("issuer snapshot refused: %s (%s)", e, e.reason)
            raise DeliveryFailed(
                f"issuer snapshot refused ({e.reason})", reason="stale_keys"
            ) from e
        return KeySnapshot(snap.jwks(), snap.version, snap.epoch, snap.token)


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
    ``data.version`` its version; ``data.snapshot`` the issuer-signed snapshot it was read
    from (checkable against the announcement keys, like ``data.jws``). ``data.events`` lists
    every event the delivery stands for (``items``, default ``item`` alone; more than one only
    when collapsing), oldest first.
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
    if keys.token is not None:
        body["data"]["snapshot"] = keys.token  # type: ignore[index]
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
