"""Optional durability: a transition is acknowledged only once N replicas hold it.

Redis replication is asynchronous, so a primary that dies right after acknowledging a write
can take it along. With ``KEYHERALD_MIN_REPLICAS=N`` the commit script and ``WAIT N timeout``
go out in one pipeline, on one connection (``WAIT`` counts the writes of its own connection);
fewer than ``N`` acknowledgements within the timeout is :class:`NotReplicated` (a 503). The
change itself stays applied on the primary (a script cannot be rolled back): the caller learns
that it may not survive a failover.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from .errors import StoreError


class NotReplicated(StoreError):
    """Fewer replicas than required acknowledged a transition in time."""


@dataclass(frozen=True, slots=True)
class Durability:
    """``WAIT replicas timeout_ms`` after every commit."""

    replicas: int
    timeout_ms: int


async def eval_durably(
    redis: aioredis.Redis,
    script: str,
    keys: Sequence[str],
    args: Sequence[Any],
    durability: Durability,
    written: Collection[str] = ("OK",),
) -> Any:
    """``EVAL script`` then ``WAIT`` on the same connection; the script's reply.

    :param written: the reply statuses (its first element) that report a write.
    :raises NotReplicated: the reply reports a write but too few replicas acknowledged.
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.eval(script, len(keys), *keys, *args)
        pipe.wait(durability.replicas, durability.timeout_ms)
        reply, acked = await pipe.execute(raise_on_error=False)
    if isinstance(reply, Exception):
        raise reply
    if isinstance(acked, Exception):
        # A failover under way: this node was demoted ("WAIT cannot be used with replica
        # instances"). Whatever the script did here is not acknowledged.
        raise NotReplicated(f"WAIT refused during a failover: {acked}")
    status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    if status in written and int(acked) < durability.replicas:
        what = f"version {reply[1]}" if status == "OK" else "the change"
        raise NotReplicated(
            f"{acked} of {durability.replicas} replicas acknowledged {what} within "
            f"{durability.timeout_ms} ms (KEYHERALD_MIN_REPLICAS)"
        )
    return reply
