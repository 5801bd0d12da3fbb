"""The key authority: lifecycle rules + key material + the Redis store, as one service object.

Build one in a test with a real Redis client and a manual clock, no environment needed::

    from issuer import Authority, Kek, RotationPolicy
    from subscriber.clock import ManualClock

    clock = ManualClock()
    authority = Authority(
        redis=client, issuer="http://issuer.test", policy=RotationPolicy(),
        kek=Kek(bytes(32)), clock=clock,
    )
    await authority.bootstrap()          # one active key, events on the stream
    await authority.rotate()             # a pending key, activates after the lead
    clock.advance(authority.policy.lead_s)
    await authority.tick()               # applies every transition now due

Every change reads a snapshot, builds the change with :mod:`issuer.lifecycle`, signs its
events, and commits it with a compare-and-set on ``version`` (retried on conflict), so several
replicas and operators may act at once.
"""

import logging
from typing import Any, Final

import redis.asyncio as aioredis

from subscriber import redis_keys
from subscriber.clock import Clock, system_clock

from . import keygen, lifecycle
from .announcement import ANNOUNCE_PURPOSE
from .errors import IllegalTransition, StoreTampered, UnknownKey, VersionConflict
from .idempotency import IdempotentRequest
from .jwks import JwksDocument, jwks_uri, render_jwks, snapshot_uri
from .kek import Kek
from .ledger import (
    KEEP_ENDED_RECORDS,
    MAX_COMMIT_ATTEMPTS,
    Applied,
    ChangeBuilder,
    Ledger,
)
from .lifecycle import Change, NewKey, Transition
from .policy import RotationPolicy
from .readiness import (
    DEFAULT_GATE,
    GATE_CONFIRMED,
    ActivationGate,
    GateWatch,
    Readiness,
    read_readiness,
)
from .records import ACTIVE, PENDING, KeyRecord, chronological
from .store import Snapshot

__all__ = [
    "ANNOUNCE_PURPOSE",
    "KEEP_ENDED_RECORDS",
    "MAX_TRANSITIONS_PER_TICK",
    "SIGNING_PURPOSE",
    "Applied",
    "Authority",
]

logger = logging.getLogger(__name__)

#: A tick applies at most this many transitions (a store many periods behind catches up).
MAX_TRANSITIONS_PER_TICK: Final = 50
SIGNING_PURPOSE: Final = "signing-key"


class Authority(Ledger):
    """The issuer's key authority. All I/O goes through ``redis``; all time through ``clock``.

    The store, the announcement key, chained events, signed snapshots and freshness records
    are the :class:`~issuer.ledger.Ledger`'s; this class adds the private signing keys and the
    rotation lifecycle.

    :param redis: an asyncio client the caller owns (either ``decode_responses`` setting).
    :param issuer: the ``iss`` value and public base URL.
    :param kek: seals private keys at rest.
    :param gate: when a due activation may go ahead (default: at the planned time).
    :param state_dir: keep the high-water mark (newest authenticated state) in a file here too,
        so a restarted issuer still refuses a store that was rolled back.
    :param freshness_interval_s: how often signed freshness records are published (and how
        long a signed snapshot is reused before it is signed anew).
    """

    log = logger

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        issuer: str,
        policy: RotationPolicy,
        kek: Kek,
        clock: Clock = system_clock,
        gate: ActivationGate = DEFAULT_GATE,
        state_dir: str | None = None,
        freshness_interval_s: float = 30.0,
    ) -> None:
        super().__init__(
            redis=redis,
            issuer=issuer,
            kek=kek,
            retention_s=policy.stream_retention_s,
            clock=clock,
            state_dir=state_dir,
            freshness_interval_s=freshness_interval_s,
        )
        self.gate = gate
        self._gate_watch = GateWatch(gate)
        self.policy = policy
        self._jwks: JwksDocument | None = None
        self._signing: tuple[tuple[str | None, int], keygen.KeyPair] | None = None
        self._metadata: dict[str, Any] | None = None

    def _complete(self, snap: Snapshot) -> bool:
        # An issuer's key set always has a key that signs; an empty one is bootstrapped.
        return lifecycle.active_key(snap.keys) is not None

    # -- reads -----------------------------------------------------------------------------

    async def keys(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        snap = await self.snapshot()
        return chronological(snap.keys.values())

    async def plan(self, count: int = 6) -> list[Transition]:
        """The next ``count`` transitions, with times, if nobody intervenes."""
        snap = await self.snapshot()
        return lifecycle.plan(snap.keys, self.policy, self.clock(), count=count)

    async def jwks(self) -> JwksDocument:
        """The JWKS for the current version; rebuilt only when ``(epoch, version)`` moved.

        While Redis is unreachable the last document is served (a stale key set beats none
        for verifiers); with no document yet, the Redis error propagates.
        """
        try:
            epoch, version = await self.store.head()
            cached = self._jwks
            if (
                cached is not None
                and (cached.epoch, cached.version) == (epoch, version)
                and self.at_mark((epoch, version))
            ):
                return cached
            self._jwks = render_jwks(await self.snapshot())
        except aioredis.RedisError as e:
            if self._jwks is None:
                raise
            logger.warning("Redis unavailable (%s): serving JWKS version %s", e, self._jwks.version)
        return self._jwks

    async def metadata(self) -> dict[str, Any]:
        """The ``openid-configuration`` document (see ``docs/protocol.md``); the last one while
        Redis is unreachable."""
        try:
            snap = await self.snapshot()
        except aioredis.RedisError as e:
            if self._metadata is None:
                raise
            logger.warning("Redis unavailable (%s): serving the last metadata", e)
            return self._metadata
        assert snap.epoch is not None  # snapshot() initialises the store
        algs = sorted({k.alg for k in snap.keys.values() if k.published} | {self.policy.algorithm})
        self._metadata = {
            "issuer": self.issuer,
            "jwks_uri": jwks_uri(self.issuer),
            "id_token_signing_alg_values_supported": algs,
            "keyherald": {
                "stream": redis_keys.event_stream(self.issuer),
                "announcement_keys": [self.announcement.jwk(snap.meta, snap.epoch)],
                "snapshot_uri": snapshot_uri(self.issuer),
                "freshness_stream": redis_keys.freshness_stream(self.issuer),
                "freshness_interval_s": self.freshness_interval_s,
                "version": snap.version,
                "epoch": snap.epoch,
            },
        }
        return self._metadata

    async def signing_key(self) -> keygen.KeyPair:
        """The active key, unsealed; one ``HMGET`` per call while the key set is unchanged."""
        head = await self.store.head()
        if self._signing is not None and self._signing[0] == head and self.at_mark(head):
            return self._signing[1]
        snap = await self.snapshot()
        active = lifecycle.active_key(snap.keys)
        assert active is not None  # snapshot() bootstraps
        pair = self._signing[1] if self._signing is not None else None
        if pair is None or pair.kid != active.kid:
            der = self.kek.open(active.sealed, kid=active.kid, purpose=SIGNING_PURPOSE)
            pair = keygen.load(der, active.alg)
        self._signing = ((snap.epoch, snap.version), pair)
        return pair

    # -- changes ---------------------------------------------------------------------------

    async def bootstrap(self) -> Snapshot:
        """Initialise an empty store (epoch, announcement key) with one active key, and return
        the authenticated key set.

        Safe to call from several replicas at once: one wins, the others read its result.
        """
        await self._bootstrap_store()
        return await self.snapshot()

    async def _bootstrap_store(self) -> None:
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snap = await self.store.load()
            if snap.initialised and lifecycle.active_key(snap.keys) is not None:
                return
            if snap.initialised and (problem := self._mac.problem(snap)) is not None:
                raise StoreTampered(f"the key store does not authenticate: {problem}")
            meta: dict[str, str] = {}
            if not snap.initialised:
                meta = self.announcement.new_store_meta()
            epoch = snap.epoch or meta["epoch"]
            now = self.clock()
            change = lifecycle.bootstrap(snap.keys, self._new_key(), self.policy, now)
            try:
                await self._commit(snap, change, now, meta=meta, epoch=epoch)
            except VersionConflict:
                continue
            if meta:
                logger.warning(
                    "initialised an empty key store: epoch %s, announcement key %s",
                    epoch,
                    meta["announce_kid"],
                    extra={"epoch": epoch, "kid": meta["announce_kid"]},
                )
            return
        raise VersionConflict("could not bootstrap: the store kept changing")

    # Each operator change takes ``idempotency``: the request it answers, made under an
    # Idempotency-Key. It is then made once per key: a repeat raises AlreadyApplied with the
    # first result (see issuer.idempotency for the other outcomes).

    async def rotate(self, *, idempotency: IdempotentRequest | None = None) -> Applied:
        """Publish a new pending key now; it activates after the lead."""
        new = self._new_key()

        def build(snap: Snapshot, now: float) -> Change:
            return lifecycle.add(snap.keys, new, self.policy, now, activate_at=now)

        return await self._change(build, idempotency)

    async def activate(self, kid: str, *, idempotency: IdempotentRequest | None = None) -> Applied:
        """Make pending ``kid`` active now (it must have been published for the lead)."""
        return await self._change(
            lambda s, now: lifecycle.activate(s.keys, kid, self.policy, now), idempotency
        )

    async def retire(self, kid: str, *, idempotency: IdempotentRequest | None = None) -> Applied:
        """Withdraw pending ``kid``, or drop retiring ``kid`` whose grace is over."""
        return await self._change(
            lambda s, now: lifecycle.retire(s.keys, kid, self.policy, now), idempotency
        )

    async def revoke(self, kid: str, *, idempotency: IdempotentRequest | None = None) -> Applied:
        """Remove ``kid`` at once; if it was active, the next key activates at once."""
        replacement: list[NewKey] = []

        def build(snap: Snapshot, now: float) -> Change:
            key = snap.keys.get(kid)
            pending = any(k.state == PENDING for k in snap.keys.values())
            if key is not None and key.state == ACTIVE and not pending and not replacement:
                replacement.append(self._new_key())
            return lifecycle.revoke(
                snap.keys, kid, self.policy, now, replacement[0] if replacement else None
            )

        applied = await self._change(build, idempotency)
        logger.warning("key %s revoked", kid, extra={"kid": kid, "version": applied.version})
        return applied

    async def tick(self, *, fence: int | None = None) -> list[Applied]:
        """Apply every transition due now, one commit each, in order.

        :param fence: the scheduler's fencing token; a stale one raises
            :class:`~issuer.errors.LeaseLost` and nothing is written.
        """
        held = await self.held_activations()

        def build(snap: Snapshot, now: float) -> Change | None:
            return self._due_change(snap, now, held)

        applied: list[Applied] = []
        for _ in range(MAX_TRANSITIONS_PER_TICK):
            result = await self._apply(build, fence=fence)
            if result is None:
                break
            applied.append(result)
        return applied

    async def readiness(self, kid: str) -> Readiness:
        """Which live verifiers hold ``kid`` (from their heartbeats), and since when.

        :raises UnknownKey: no such key.
        """
        snap = await self.snapshot()
        if kid not in snap.keys:
            raise UnknownKey(kid)
        return await read_readiness(self.redis, self.issuer, kid, self.clock())

    async def held_activations(self) -> frozenset[str]:
        """Kids whose activation is due but held back by the ``confirmed`` gate."""
        if self.gate.mode != GATE_CONFIRMED:
            return frozenset()
        snap = await self.snapshot()
        now = self.clock()
        due = [
            (step.kid, step.at)
            for step in lifecycle.scheduled(snap.keys, self.policy, now)
            if step.at <= now and step.action == lifecycle.ACTIVATE and step.kid is not None
        ]
        return await self._gate_watch.held(self.redis, self.issuer, due, now)

    def _due_change(
        self, snap: Snapshot, now: float, held: frozenset[str] = frozenset()
    ) -> Change | None:
        transition = lifecycle.due(snap.keys, self.policy, now, held=held)
        if transition is None:
            return None
        new = self._new_key() if lifecycle.needs_new_key(snap.keys, transition) else None
        return lifecycle.apply(snap.keys, transition, self.policy, now, new)

    async def _change(
        self, build: ChangeBuilder, idempotency: IdempotentRequest | None = None
    ) -> Applied:
        applied = await self._apply(build, idempotency=idempotency)
        if applied is None:
            raise IllegalTransition("nothing to do")
        return applied

    # -- key material ----------------------------------------------------------------------

    def _new_key(self) -> NewKey:
        pair = keygen.generate(self.policy.algorithm)
        sealed = self.kek.seal(pair.private_der(), kid=pair.kid, purpose=SIGNING_PURPOSE)
        return NewKey(kid=pair.kid, alg=pair.alg, jwk=pair.jwk, sealed=sealed)
