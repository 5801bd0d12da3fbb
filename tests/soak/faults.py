"""The faults the soak injects, one after another, and the revocation it times.

Each fault returns a :class:`FaultRecord`; the soak then waits (bounded) until every verifier is
live on the issuer's current key set and the partner has caught up, and records how long that
took. How long a fault lasts is configuration (:class:`~tests.soak.harness.Timing`); whether the
system recovered is always a polled condition.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from subscriber.redis_keys import event_stream

from .harness import (
    RELAY_READY_PATH,
    Cluster,
    EventRecord,
    SoakTimeout,
    Timing,
    wait_for,
)
from .loadgen import LoadGenerator


@dataclass
class FaultRecord:
    """What one injected fault did, for the report."""

    name: str
    started_at: float
    ended_at: float = 0.0
    settled_at: float = 0.0
    settle_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "started_at": round(self.started_at, 3),
            "duration_s": round(self.ended_at - self.started_at, 3),
            "settle_s": round(self.settle_s, 3),
            **self.notes,
        }


@dataclass
class Revocation:
    """One emergency revocation of the active key and when each verifier refused it."""

    kid: str
    requested_at: float
    reached: dict[str, float] = field(default_factory=dict)

    @property
    def reach_s(self) -> float:
        return max(self.reached.values()) - self.requested_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "requested_at": round(self.requested_at, 3),
            "verifiers": len(self.reached),
            "reach_all_s": round(self.reach_s, 4),
        }


class Faults:
    """Fault injection against one :class:`Cluster` under load."""

    def __init__(self, cluster: Cluster, load: LoadGenerator) -> None:
        self.c = cluster
        self.load = load
        self.records: list[FaultRecord] = []
        self.revocations: list[Revocation] = []

    @property
    def t(self) -> Timing:
        return self.c.timing

    async def run(self, name: str) -> FaultRecord:
        """Inject fault ``name`` (a method of this class), then wait for convergence."""
        record = FaultRecord(name, time.time())
        await getattr(self, name)(record)
        record.ended_at = record.ended_at or time.time()
        record.settle_s = await self.c.settle(name)
        record.settled_at = time.time()
        self.records.append(record)
        return record

    async def _new_events(self, count: int, timeout_s: float) -> None:
        start = len(self.c.events)

        async def enough() -> bool:
            return len(self.c.events) >= start + count

        await wait_for(f"{count} new events", enough, timeout_s)

    # -- Redis -----------------------------------------------------------------------------

    async def redis_restart(self, record: FaultRecord) -> None:
        """Stop Redis (SIGTERM) and start it on the same port and AOF data directory."""
        record.notes["version_before"] = (await self.c.head())[1]
        await asyncio.to_thread(self.c.redis.restart)

    async def redis_flush(self, record: FaultRecord) -> None:
        """FLUSHALL: the key store, the stream, heartbeats and the relay's partners are gone."""
        # Anything still queued at the relay goes with the flush; start from an empty queue so
        # that what is lost is only what the flush itself races with (reported apart).
        await wait_for("partner caught up", self._partner_caught_up, self.t.settle_timeout_s)
        old_epoch, version = await self.c.head()
        flushed_at = time.time()
        async with self.c.redis_client() as client:
            await client.flushall()
        record.ended_at = time.time()
        # The relay's partner list went with the data; the operator registers the partner
        # again and replays the new key store's history to it.
        await wait_for("partner re-registered", self._reregister, self.t.settle_timeout_s)

        async def restored() -> bool:
            # The running issuer writes its key set back as the next version of the same
            # history (its high-water mark), so no key and no valid token is lost.
            epoch, now_version = await self.c.head()
            return epoch == old_epoch and now_version > version

        await wait_for("issuer restored its key set", restored, self.t.settle_timeout_s)
        await self.c.replay(1)
        record.notes.update(flushed_at=flushed_at, epoch=old_epoch, version_before=version)

    async def _reregister(self) -> bool:
        await self.c.register_partner()
        return True

    async def stream_trim(self, record: FaultRecord) -> None:
        """Freeze one verifier process, let it miss events, then trim them off the stream so that
        on resuming it finds entries gone past its last id."""
        victim = self.c.worker_names[-1]
        proc = self.c.procs[victim]
        self.load.down.add(victim)
        proc.freeze()
        try:
            await self._new_events(3, self.t.rotation_period_s * 4)
            # Wait until the relay has consumed what is about to be trimmed, as the issuer's
            # age-based trim (retention >= the longest grace) guarantees in production.
            await wait_for("partner caught up", self._partner_caught_up, self.t.settle_timeout_s)
            await wait_for("the soak's tail caught up", self._tail_caught_up, 5.0)
            stream = event_stream(self.c.issuer_url)
            async with self.c.redis_client() as client:
                newest: Any = await client.xrevrange(stream, count=1)
                trimmed = await client.xtrim(stream, minid=newest[0][0].decode())
            record.notes["entries_trimmed"] = trimmed
        finally:
            proc.thaw()
        record.ended_at = time.time()
        await self.c.settle("stream_trim", partner=False)
        self.load.down.discard(victim)

    async def _tail_caught_up(self) -> bool:
        head = await self.c.head()
        return bool(self.c.events) and (self.c.events[-1].epoch, self.c.events[-1].version) == head

    async def _partner_caught_up(self) -> bool:
        epoch, version = await self.c.head()
        return any(
            r["phase"] == "received" and (r["epoch"], r["version"]) == (epoch, version)
            for r in self.c.inbox()
        )

    async def redis_pause(self, record: FaultRecord) -> None:
        """SIGSTOP Redis for longer than the verifiers' socket timeout, then SIGCONT."""
        record.notes["pause_s"] = self.t.pause_s
        record.notes["socket_timeout_s"] = self.t.socket_timeout_s
        self.c.redis.pause()
        try:
            await asyncio.sleep(self.t.pause_s)  # the fault's length is configuration
        finally:
            self.c.redis.resume()

    # -- processes -------------------------------------------------------------------------

    async def issuer_kill(self, record: FaultRecord) -> None:
        """SIGKILL the issuer within a tick of its next planned activation, restart it, and record
        on which side of the commit the kill fell."""
        target: dict[str, Any] = {}

        async def activation_planned() -> bool:
            # The plan names the key only once it is published, `lead` before it activates.
            now = time.time()
            for p in await self.c.plan():
                if p["action"] == "activate" and p["kid"] and p["at"] > now + 0.3:
                    target.update(at=p["at"], kid=p["kid"])
                    return True
            return False

        await wait_for("a planned activation", activation_planned, 3 * self.t.rotation_period_s)
        at, kid = target["at"], target["kid"]
        # Successive kills walk across the tick that applies it: a tick before it is due (the
        # restarted issuer must apply it), half a tick before, at, and half a tick after.
        kills = sum(1 for r in self.records if r.name == "issuer_kill")
        offset = self.t.tick_interval_s * (kills % 4 - 2) / 2
        await asyncio.sleep(max(0.0, at + offset - time.time()))
        self.c.procs["issuer"].kill()
        killed_at = time.time()
        self.c.procs["issuer"].start()
        await self.c.procs["issuer"].wait_ready("/.well-known/openid-configuration", 30.0)
        record.notes["issuer_down_s"] = round(time.time() - killed_at, 3)

        def activations() -> list[EventRecord]:
            return [e for e in self.c.events if e.type == "key-activated" and e.kid == kid]

        async def applied() -> bool:
            return bool(activations())

        await wait_for("the planned activation", applied, self.t.settle_timeout_s)
        committed = activations()[0].ts
        record.notes.update(
            planned_kid=kid,
            killed_after_due_s=round(killed_at - at, 3),
            committed="before the kill" if committed <= killed_at else "after the restart",
            activations_of_planned_kid=len(activations()),
        )

    async def verifier_kill(self, record: FaultRecord) -> None:
        """SIGKILL a verifier process (both its instances) and start it again."""
        victim = self.c.worker_names[0]
        proc = self.c.procs[victim]
        self.load.down.add(victim)
        proc.kill()
        proc.start()
        await proc.wait_ready("/healthz", 30.0)
        record.ended_at = time.time()
        await self.c.settle("verifier_kill", partner=False)
        self.load.down.discard(victim)

    async def relay_kill(self, record: FaultRecord) -> None:
        """SIGKILL the relay while the partner is holding a delivery open, then restart it."""
        await self.c.partner_control(self.t.delivery_timeout_s / 2)
        starts = sum(1 for r in self.c.inbox() if r["phase"] == "start")

        async def delivery_open() -> bool:
            return sum(1 for r in self.c.inbox() if r["phase"] == "start") > starts

        await wait_for("a delivery in flight", delivery_open, self.t.rotation_period_s * 4, 0.01)
        in_flight = [r for r in self.c.inbox() if r["phase"] == "start"][-1]["webhook_id"]
        self.c.procs["relay"].kill()
        record.notes["in_flight_webhook_id"] = in_flight
        await self.c.partner_control(0.0)
        self.c.procs["relay"].start()
        await self.c.procs["relay"].wait_ready(RELAY_READY_PATH, 30.0)

    async def partner_down(self, record: FaultRecord) -> None:
        """Kill the partner and keep it down while rotations go on, then bring it back."""
        proc = self.c.procs["partner"]
        proc.kill()
        record.notes["down_s"] = self.t.partner_down_s
        version_before = (await self.c.head())[1]
        await asyncio.sleep(self.t.partner_down_s)  # the outage's length is configuration
        record.notes["versions_while_down"] = (await self.c.head())[1] - version_before
        proc.start()
        await proc.wait_ready("/healthz", 30.0)

    # -- revocation --------------------------------------------------------------------------

    async def revoke_active(self) -> Revocation:
        """Revoke the active key once its successor is in every verifier's cache, and time how
        long until every verifier refuses it."""
        c = self.c
        state: dict[str, Any] = {}

        async def successor_everywhere() -> bool:
            keys = await c.keys()
            active = [k["kid"] for k in keys if k["state"] == "active"]
            pending = [k["kid"] for k in keys if k["state"] == "pending"]
            if len(active) != 1 or not pending:
                return False
            for name in c.worker_names:
                for inst in (await c.worker_state(name))["instances"]:
                    if inst["state"] != "live" or not set(pending) <= set(inst["keys"]):
                        return False
            state["kid"] = active[0]
            return True

        await wait_for(
            "a successor key in every cache", successor_everywhere, 4 * self.t.rotation_period_s
        )
        revocation = Revocation(state["kid"], time.time())
        await c.revoke(revocation.kid)

        async def refused_everywhere() -> bool:
            for name in c.worker_names:
                for inst in (await c.worker_state(name))["instances"]:
                    at = inst["gone_at"].get(revocation.kid)
                    if at is None:
                        return False
                    revocation.reached[inst["instance_id"]] = at
            return True

        try:
            await wait_for("revocation everywhere", refused_everywhere, self.t.settle_timeout_s)
        except SoakTimeout:
            revocation.reached.clear()
            raise
        self.revocations.append(revocation)
        return revocation
