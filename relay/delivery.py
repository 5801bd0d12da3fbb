"""Delivery: one worker per partner sends its queue, head first, under a Redis lease.

The dispatcher (:meth:`Deliverer.run`) looks at every partner each poll interval, or at once
when this replica queued something, and starts a worker for each enabled partner with a
non-empty queue whose lease it can take. The lease (held by one replica, renewed alongside the
work, longer than an attempt's deadline) is what keeps one partner's deliveries in order
when several replicas run; if a replica dies mid-delivery its lease expires and another
replica sends the same item again, with the same ``webhook-id``.

A head is sent only once every older stream entry has been queued (none is left pending in
the consumer group): if a replica died holding entries 1-12, a peer holds 13 until they are
reclaimed, so a partner gets every version, in order, and the ``delivered`` mark means
"every version up to here". With ``collapse`` on, one delivery may also stand for the queued
items after the head that the current key set already covers (never a revocation, which always
travels alone); the body lists them all in ``data.events``, and the set is fixed at the first
attempt so every retry sends the same message under the same ``webhook-id``.

An attempt's outcome:

* ``2xx``: delivered (with every item it stood for);
* ``410 Gone``: the partner is disabled (reason ``gone``);
* anything else (a ``3xx`` is recorded as ``redirect``, with its ``Location``): retried per
  the :class:`~relay.schedule.RetrySchedule` (longer if a 429/503 sent ``Retry-After``),
  dead-lettered once attempts are spent, and the partner disabled (reason ``failing``) once it
  has failed without a single success for ``failure_disable_s``.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis

from subscriber.clock import Clock, system_clock
from subscriber.events import Event

from . import egress
from .egress import EgressPolicy, Resolver, system_resolver
from .errors import DeliveryFailed, EgressRefused, PartnerNotFound
from .items import Item, Recorded, collapse, deliveries, waits_for_older
from .keysource import KeySource, current_for, payload
from .metrics import RelayMetrics
from .partners import Partner, PartnerStore
from .policy import Attempt, DeliveryPolicy, decide
from .queue import DeliveryStore, HeadState
from .signing import webhook_headers

logger = logging.getLogger(__name__)


def _cancelling() -> bool:
    # The Redis client can lose a cancellation that lands mid-command (it reconnects and
    # retries); the task still counts it, so loops check here and stop.
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What a replay will send: ``events`` queued, going out as ``deliveries`` requests."""

    events: int
    deliveries: int
    versions: list[int]


class Deliverer:
    """Queues verified events for partners and delivers them.

    :param owner: this replica's id (lease holder, attempt records).
    :param group: the consumer group whose pending entries hold deliveries back.
    :param http: client for partner requests; see :func:`relay.egress.new_client`.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        issuer: str,
        partners: PartnerStore,
        keys: KeySource,
        *,
        policy: DeliveryPolicy,
        egress_policy: EgressPolicy,
        http: httpx.AsyncClient,
        owner: str,
        group: str = "relay",
        metrics: RelayMetrics | None = None,
        clock: Clock = system_clock,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.store = DeliveryStore(redis, issuer)
        self.partners = partners
        self.policy = policy
        self.metrics = metrics or RelayMetrics()
        self._keys = keys
        self._egress = egress_policy
        self._http = http
        self._owner = owner
        self._group = group
        self._clock = clock
        self._resolver = resolver
        self._wakeup = asyncio.Event()
        self._workers: dict[str, asyncio.Task[None]] = {}

    async def fan_out(self, event: Event, jws: str, group: str, entry_id: str) -> list[str]:
        """Queue ``event`` for every enabled partner that wants its type and ack the entry.

        :returns: the partner ids it was queued for.
        """
        wanted = [p.id for p in await self.partners.list() if p.enabled and p.wants(event.type)]
        await self.store.fan_out(
            Item.of(event, jws, entry_id), event.epoch, wanted, group=group, entry_id=entry_id
        )
        logger.info(
            "event queued event=%s version=%s partners=%s", event.type, event.version, len(wanted)
        )
        self.wake()
        return wanted

    async def replay(self, partner_id: str, events: Sequence[Recorded]) -> ReplayPlan:
        """Queue ``events`` again for one partner, with fresh webhook ids (a replay is a new
        message, so a partner that de-duplicates on ``webhook-id`` still processes it).

        :returns: what will be sent: how many events, and as how many deliveries.
        :raises PartnerNotFound: no such partner.
        """
        await self.partners.get(partner_id)
        suffix = f"_r{int(self._clock() * 1000)}"
        items = [Item.of(r.event, r.jws, r.entry_id, suffix) for r in events]
        added = await self.store.enqueue(partner_id, items)
        plan = ReplayPlan(
            events=added,
            deliveries=deliveries(items) if self.policy.collapse else added,
            versions=[i.version for i in items],
        )
        logger.info(
            "replay queued partner=%s items=%s deliveries=%s",
            partner_id, plan.events, plan.deliveries,
        )  # fmt: skip
        self.wake()
        return plan

    async def enable(self, partner_id: str) -> Partner:
        """Re-enable a partner: its failure streak restarts and its queue is sent at once.

        :raises PartnerNotFound: no such partner.
        """
        partner = await self.partners.set_enabled(partner_id, True)
        await self.store.reset_failures(partner_id)
        self.wake()
        return partner

    def wake(self) -> None:
        """Look for work now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Dispatch until cancelled; workers are cancelled with it (their leases expire or are
        released, and the queues stay in Redis)."""
        try:
            while True:
                if _cancelling():
                    raise asyncio.CancelledError
                try:
                    await self.tick()
                except (aioredis.RedisError, OSError) as e:
                    if _cancelling():
                        raise asyncio.CancelledError from e
                    logger.warning("dispatch failed, retrying: %s", type(e).__name__)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.policy.poll_interval_s):
                        await self._wakeup.wait()
                self._wakeup.clear()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop every worker of this replica."""
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def tick(self) -> None:
        """One dispatch round: refresh gauges, start workers where there is work."""
        now = self._clock()
        for partner in await self.partners.list():
            depth = await self.store.depth(partner.id)
            head = await self.store.head(partner.id) if depth else None
            self.metrics.queue_depth.labels(partner.id).set(depth)
            age = now - float(head.event["ts"]) if head is not None else 0.0
            self.metrics.oldest_age.labels(partner.id).set(max(0.0, age))
            if not (partner.enabled and depth) or partner.id in self._workers:
                continue
            if await self.store.acquire(partner.id, self._owner, self.policy.lease_s):
                self._workers[partner.id] = asyncio.create_task(
                    self._work(partner.id), name=f"relay-deliver-{partner.id}"
                )

    async def _work(self, partner_id: str) -> None:
        # The lease is renewed alongside the work, not only between steps: a slow attempt on
        # a starved event loop must not let the lease lapse and a peer send the same item.
        keeper = asyncio.create_task(self._keep_lease(partner_id), name=f"relay-lease-{partner_id}")
        try:
            while not keeper.done() and await self._step(partner_id):
                if _cancelling():
                    raise asyncio.CancelledError
        except asyncio.CancelledError:
            raise
        except Exception:
            # A worker must never die silently: log it; the lease expires (or is released
            # below) and the next dispatch round starts a fresh worker.
            logger.exception("delivery worker failed partner=%s", partner_id)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            self._workers.pop(partner_id, None)
            with contextlib.suppress(aioredis.RedisError, OSError):
                await asyncio.shield(self.store.release(partner_id, self._owner))

    async def _keep_lease(self, partner_id: str) -> None:
        """Renew the lease every third of its life; return when it is lost."""
        while True:
            await asyncio.sleep(self.policy.lease_s / 3)
            try:
                if not await self.store.renew(partner_id, self._owner, self.policy.lease_s):
                    logger.warning("delivery lease lost partner=%s", partner_id)
                    return
            except (aioredis.RedisError, OSError) as e:
                # Keep trying: the lease only lapses if Redis stays away for its whole life.
                logger.warning("lease renewal failed partner=%s: %s", partner_id, type(e).__name__)

    async def _step(self, partner_id: str) -> bool:
        """Deliver or wait for the head once; ``False`` when this worker should stop."""
        if not await self.store.renew(partner_id, self._owner, self.policy.lease_s):
            logger.warning("delivery lease lost partner=%s", partner_id)
            return False
        try:
            partner = await self.partners.get(partner_id)
        except PartnerNotFound:
            await self.store.drop_partner(partner_id)
            self.metrics.forget_partner(partner_id)
            return False
        head = await self.store.head(partner_id) if partner.enabled else None
        if head is None:
            return False
        state = await self.store.state(partner_id, head)
        wait = (state.next_at or 0.0) - self._clock()
        if wait > 0:
            # In slices, so a lost lease or a cancelled wait (a re-enabled partner) is noticed.
            await asyncio.sleep(min(wait, self.policy.lease_s / 3))
            return True
        pending_from = await self.store.oldest_pending(self._group)
        if waits_for_older(head, pending_from):
            # An older entry is read but not queued yet (its replica may have died: it is
            # reclaimed after idle_before_claim_s). Sending the head first would break the
            # version order and let the delivered mark pass the older versions.
            logger.debug("delivery held partner=%s version=%s", partner_id, head.version)
            self.metrics.held.labels(partner_id).inc()
            await asyncio.sleep(self.policy.poll_interval_s)
            return True
        await self._deliver(partner, head, state, pending_from)
        return True

    async def _batch(
        self, partner_id: str, head: Item, state: HeadState, covers: int, pending_from: str | None
    ) -> list[Item]:
        """The items this delivery stands for: the head alone, or (collapse) the head and the
        queued items the key set at ``covers`` already includes, fixed at the first attempt."""
        if not self.policy.collapse:
            return [head]
        if state.span is not None:
            return collapse(await self.store.items(partner_id, head.version, state.span), None)
        batch = collapse(await self.store.items(partner_id, head.version, covers), pending_from)
        await self.store.fix_span(partner_id, head, batch[-1].version)
        return batch

    async def _attempt(
        self, partner: Partner, head: Item, state: HeadState, pending_from: str | None, now: float
    ) -> tuple[Attempt, list[Item]]:
        started = time.monotonic()
        items = [head]
        try:
            # One deadline for the whole attempt, key-set fetch included, so the lease (which
            # must exceed the deadline) always outlives it.
            async with asyncio.timeout(self.policy.deadline_s):
                keys = await current_for(self._keys, head)
                items = await self._batch(partner.id, head, state, keys.version, pending_from)
                if keys.version < items[-1].version:  # a retry of a set fixed earlier
                    keys = await current_for(self._keys, items[-1])
                body = payload(head, keys, items)
                headers = webhook_headers(head.webhook_id, now, body, partner.valid_secrets(now))
                headers["content-type"] = "application/json"
                response = await self._post(partner, body, headers)
        except (DeliveryFailed, EgressRefused) as e:
            return Attempt(None, e.reason, time.monotonic() - started), items
        except TimeoutError:
            return Attempt(None, "timeout", time.monotonic() - started), items
        except httpx.HTTPError as e:
            return Attempt(None, type(e).__name__, time.monotonic() - started), items
        status = response.status
        retry_after = location = None
        if status in (429, 503):
            retry_after = egress.retry_after_s(response.headers.get("retry-after"), now)
        if 300 <= status < 400:
            location = egress.redirect_target(partner.url, response.headers.get("location"))
        error = None if 200 <= status < 300 else ("redirect" if location is not None else "status")
        return Attempt(status, error, response.latency_s, retry_after, location), items

    async def _post(
        self, partner: Partner, body: bytes, headers: dict[str, str]
    ) -> egress.Response:
        return await egress.post(
            self._http,
            partner.url,
            content=body,
            headers=headers,
            policy=self._egress,
            deadline_s=self.policy.deadline_s,
            max_response_bytes=self.policy.max_response_bytes,
            resolver=self._resolver,
        )

    async def _deliver(
        self, partner: Partner, head: Item, state: HeadState, pending_from: str | None
    ) -> None:
        now = self._clock()
        number = state.attempts + 1
        result, items = await self._attempt(partner, head, state, pending_from, now)
        outcome = decide(result, number, state.failing_since, now, self.policy)
        record: dict[str, str | int | float] = {
            "ts": repr(now),
            "version": head.version,
            "versions": ",".join(str(i.version) for i in items),
            "webhook_id": head.webhook_id,
            "attempt": number,
            "status": result.status or 0,
            "latency_ms": round(result.latency_s * 1000, 3),
            "error": result.error or "",
            "outcome": outcome,
        }
        if result.location is not None:
            record["location"] = result.location
        await self.store.record_attempt(partner.id, record)
        result_label = f"{result.status // 100}xx" if result.status else str(result.error)
        self.metrics.attempts.labels(partner.id, result_label).inc()
        self.metrics.deliveries.labels(partner.id, outcome).inc()
        log = logger.info if outcome == "delivered" else logger.warning
        log(
            "delivery %s partner=%s version=%s webhook_id=%s attempt=%s status=%s error=%s%s",
            outcome, partner.id, head.version, head.webhook_id, number, result.status,
            result.error, "" if result.location is None else f" location={result.location}",
        )  # fmt: skip
        await self._apply(outcome, partner, items, state, result, number, now)

    async def _apply(
        self,
        outcome: str,
        partner: Partner,
        items: list[Item],
        state: HeadState,
        result: Attempt,
        number: int,
        now: float,
    ) -> None:
        head = items[0]
        if outcome == "delivered":
            removed = await self.store.complete(partner.id, items)
            if removed > 1:
                self.metrics.deliveries.labels(partner.id, "collapsed").inc(removed - 1)
            return
        failing_since = state.failing_since if state.failing_since is not None else now
        span = items[-1].version if self.policy.collapse else None
        if outcome in ("gone", "disabled"):
            await self.store.record_failure(partner.id, head, number, now, failing_since, span)
            reason = "gone" if outcome == "gone" else "failing"
            await self.partners.set_enabled(partner.id, False, reason)
            logger.warning(
                "partner disabled partner=%s reason=%s failing_since=%s",
                partner.id, reason, failing_since,
            )  # fmt: skip
        elif outcome == "dead_lettered":
            letter: dict[str, str | int | float] = {
                "kind": "delivery",
                "reason": result.error or "failed",
                "partner": partner.id,
                "version": head.version,
                "versions": ",".join(str(i.version) for i in items),
                "webhook_id": head.webhook_id,
                "attempts": number,
                "ts": repr(now),
                "item": head.member,
            }
            if result.location is not None:
                letter["location"] = result.location
            await self.store.dead_letter(letter)
            self.metrics.dead_letters.labels("delivery", result.error or "failed").inc()
            await self.store.drop_head(partner.id, items)
            await self.store.record_failure_streak(partner.id, failing_since)
        else:
            delay = self.policy.schedule.delay_s(number + 1, result.retry_after_s) or 0.0
            await self.store.record_failure(
                partner.id, head, number, now + delay, failing_since, span
            )
