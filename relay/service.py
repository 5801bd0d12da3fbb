"""One relay replica: the stream consumer and the deliverer, started and stopped together.

::

    async with Relay(redis, issuer, announce_keys, key_source, ...) as relay:
        await relay.partners.register("https://partner.example/hooks")
        ...

Several replicas may run against one Redis; each needs its own ``consumer`` name. A replica
restarted under a new name leaves its unacknowledged entries to be reclaimed by whoever runs
after ``idle_before_claim_s``; deliveries of newer events wait for them meanwhile.
"""

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType

import httpx
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from issuer.kek import Kek
from subscriber.clock import Clock, system_clock

from . import constants
from .consumer import KeyRefresher, StreamConsumer
from .delivery import Deliverer
from .egress import EgressPolicy, Resolver, new_client, system_resolver
from .keysource import KeySource
from .metrics import RelayMetrics
from .partners import PartnerStore
from .policy import DeliveryPolicy

logger = logging.getLogger(__name__)


def _report_crash(task: "asyncio.Task[None]") -> None:
    # A loop that dies stops the relay's work silently; say so at once, not at shutdown.
    if not task.cancelled() and task.exception() is not None:
        logger.error("relay task %s stopped", task.get_name(), exc_info=task.exception())


class Relay:
    """A relay replica.

    :param redis: the issuer's Redis; the caller owns the client.
    :param announce_keys: keys that sign the issuer's events (kid -> key).
    :param keys: where the current key set for payloads comes from.
    :param consumer: this replica's consumer-group name; reuse it after a restart so the
        replica finds its own pending entries first.
    :param refresh_announce_keys: refetches the issuer's announcement keys (see
        :class:`~relay.consumer.StreamConsumer`); ``None`` when they are pinned.
    :param kek: seals partner secrets at rest (see :mod:`relay.partners`).
    :param http: client for partner requests; one from :func:`relay.egress.new_client` (owned
        and closed by the relay) when not given.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        issuer: str,
        announce_keys: Mapping[str, Ed25519PublicKey],
        keys: KeySource,
        *,
        policy: DeliveryPolicy,
        egress_policy: EgressPolicy,
        consumer: str,
        group: str = "relay",
        secret_overlap_s: float = constants.secret_overlap_s,
        block_ms: int = constants.block_ms,
        idle_before_claim_s: float = constants.idle_before_claim_s,
        max_attempts: int = constants.max_entry_attempts,
        http: httpx.AsyncClient | None = None,
        metrics: RelayMetrics | None = None,
        clock: Clock = system_clock,
        resolver: Resolver = system_resolver,
        refresh_announce_keys: KeyRefresher | None = None,
        kek: Kek | None = None,
    ) -> None:
        if idle_before_claim_s <= policy.deadline_s:
            raise ValueError(
                f"idle_before_claim_s must exceed the delivery deadline ({policy.deadline_s}), "
                f'the input is "{idle_before_claim_s}"'
            )
        self.issuer = issuer
        self.announce_keys = announce_keys
        self.metrics = metrics or RelayMetrics()
        self._own_http = http is None
        self._http = http or new_client()
        self.partners = PartnerStore(
            redis, issuer, overlap_s=secret_overlap_s, policy=egress_policy, clock=clock, kek=kek
        )
        self.deliverer = Deliverer(
            redis,
            issuer,
            self.partners,
            keys,
            policy=policy,
            egress_policy=egress_policy,
            http=self._http,
            owner=consumer,
            group=group,
            metrics=self.metrics,
            clock=clock,
            resolver=resolver,
        )
        self.consumer = StreamConsumer(
            redis,
            issuer,
            announce_keys,
            self.deliverer.fan_out,
            group=group,
            consumer=consumer,
            block_ms=block_ms,
            idle_before_claim_s=idle_before_claim_s,
            max_attempts=max_attempts,
            retry_interval_s=policy.poll_interval_s,
            metrics=self.metrics,
            refresh_keys=refresh_announce_keys,
        )
        self.redis = redis
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Seal any partner secret still stored in clear (with a KEK), create the consumer
        group, and start consuming and delivering."""
        await self.partners.seal_stored()
        await self.consumer.ensure_group()
        self._tasks = [
            asyncio.create_task(self.consumer.run(), name="relay-consumer"),
            asyncio.create_task(self.deliverer.run(), name="relay-dispatcher"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)
        logger.info("relay started consumer=%s", self.consumer.consumer)

    async def wait(self) -> None:
        """Return when the consumer or the dispatcher stops, raising what stopped it (they
        only stop on a bug or a cancellation; a process supervisor should then restart us)."""
        if not self._tasks:
            raise RuntimeError("the relay is not started")
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def aclose(self) -> None:
        """Stop; undelivered work stays in Redis for the next start or a peer. A loop that
        had already failed was logged when it did and is surfaced by :meth:`wait`."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_http and not self._http.is_closed:
            await self._http.aclose()

    async def __aenter__(self) -> "Relay":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
