"""Reading back what the issuer wrote: the signed stream, as a subscriber would."""

from typing import Any

import redis.asyncio as aioredis

from issuer.authority import Authority
from subscriber.events import Event, load_announcement_keys, parse_event


async def stream_events(redis: aioredis.Redis, authority: Authority) -> list[Event]:
    """Every event on the stream, signature-checked against the served announcement key."""
    metadata = await authority.metadata()
    keys = load_announcement_keys(metadata["keyherald"]["announcement_keys"])
    entries = await redis.xrange(metadata["keyherald"]["stream"])
    return [parse_event(fields, keys, issuer=authority.issuer) for _, fields in entries]


def states(keys: list[Any]) -> dict[str, str]:
    return {k.kid: k.state for k in keys}


def replay(events: list[Event]) -> dict[str, str]:
    """Key states as a subscriber reconstructs them from the events alone."""
    result: dict[str, str] = {}
    for event in events:
        if event.type == "key-added":
            result[event.kid] = "pending"
        elif event.type == "key-activated":
            previous = event.data.get("previous_kid")
            if previous is not None:
                result[previous] = "retiring"
            result[event.kid] = "active"
        else:
            result[event.kid] = "revoked" if event.data["reason"] == "revoked" else "retired"
    return result
