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

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subscriber import redis_keys
from subscriber.clock import Clock, system_clock
from subscriber.events import Event, announcement_jwk, sign_event

from . import keygen, lifecycle
from .errors import IllegalTransition, UnknownKey, VersionConflict
from .jwks import JwksDocument, jwks_uri, render_jwks
from .kek import Kek
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
from .records import ACTIVE, PENDING, KeyRecord, chronological, forgettable
from .store import KeyStore, Snapshot

logger = logging.getLogger(__name__)

#: Records of retired and revoked keys kept for the admin API's history; older ones are deleted.
KEEP_ENDED_RECORDS: Final = 32
#: Attempts at a change when other writers keep winning the compare-and-set.
MAX_COMMIT_ATTEMPTS: Final = 20
#: A tick applies at most this many transitions (a store many periods behind catches up).
MAX_TRANSITIONS_PER_TICK: Final = 50
SIGNING_PURPOSE: Final = "signing-key"
ANNOUNCE_PURPOSE: Final = "announcement-key"

#: Builds a change from the current snapshot and time; ``None`` means nothing to do.
ChangeBuilder = Callable[[Snapshot, float], Change | None]


@dataclass(frozen=True, slots=True)
class Applied:
    """A committed change: the version it produced and its signed events, in order."""

    version: int
    events: tuple[Event, ...]
    records: tuple[KeyRecord, ...]


class Authority:
    """The issuer's key authority. All I/O goes through ``redis``; all time through ``clock``.

    :param redis: an asyncio client the caller owns (either ``decode_responses`` setting).
    :param issuer: the ``iss`` value and public base URL.
    :param kek: seals private keys at rest.
    :param gate: when a due activation may go ahead (default: at the planned time).
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        issuer: str,
        policy: RotationPolicy,
        kek: Kek,
        clock: Clock = system_clock,
        gate: ActivationGate = DEFAULT_GATE,
    ) -> None:
        self.redis = redis
        self.gate = gate
        self._gate_watch = GateWatch(gate)
        self.issuer = issuer
        self.policy = policy
        self.kek = kek
        self.clock = clock
        self.store = KeyStore(redis, issuer)
        self._jwks: JwksDocument | None = None
        self._signing: tuple[tuple[str | None, int], keygen.KeyPair] | None = None
        self._announce: tuple[str, str, Ed25519PrivateKey] | None = None  # epoch, kid, key
        self._metadata: dict[str, Any] | None = None

    # -- reads -----------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """The current key set; bootstraps an empty (or lost) store first."""
        snap = await self.store.load()
        if not snap.initialised or lifecycle.active_key(snap.keys) is None:
            snap = await self.bootstrap()
        assert snap.epoch is not None
        # Unsealing at first read finds a wrong KEK at start-up, and keeps the announcement key
        # in memory should the store ever be lost (see _new_store_meta).
        self._announce_signer(snap.meta, snap.epoch)
        return snap

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
            if cached is not None and (cached.epoch, cached.version) == (epoch, version):
                return cached
            self._jwks = render_jwks(await self.snapshot())
        except aioredis.RedisError as e:
            if self._jwks is None:
                raise
            logger.warning("Redis unavailable (%s): serving JWKS version %s", e, self._jwks.version)
        return self._jwks

    async def announcement_jwks(self) -> list[dict[str, Any]]:
        """The public JWK(s) of the announcement key that signs stream events."""
        snap = await self.snapshot()
        return [self._announce_key(snap)[1]]

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
        algs = sorted({k.alg for k in snap.keys.values() if k.published} | {self.policy.algorithm})
        self._metadata = {
            "issuer": self.issuer,
            "jwks_uri": jwks_uri(self.issuer),
            "id_token_signing_alg_values_supported": algs,
            "keyherald": {
                "stream": redis_keys.event_stream(self.issuer),
                "announcement_keys": [self._announce_key(snap)[1]],
                "version": snap.version,
                "epoch": snap.epoch,
            },
        }
        return self._metadata

    async def signing_key(self) -> keygen.KeyPair:
        """The active key, unsealed; one ``HMGET`` per call while the key set is unchanged."""
        head = await self.store.head()
        if self._signing is not None and self._signing[0] == head:
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
        """Initialise an empty store (epoch, announcement key) with one active key.

        Safe to call from several replicas at once: one wins, the others read its result.
        """
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snap = await self.store.load()
            if snap.initialised and lifecycle.active_key(snap.keys) is not None:
                return snap
            meta: dict[str, str] = {}
            if not snap.initialised:
                meta = self._new_store_meta()
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
            return await self.store.load()
        raise VersionConflict("could not bootstrap: the store kept changing")

    async def rotate(self) -> Applied:
        """Publish a new pending key now; it activates after the lead."""
        new = self._new_key()

        def build(snap: Snapshot, now: float) -> Change:
            return lifecycle.add(snap.keys, new, self.policy, now, activate_at=now)

        return await self._change(build)

    async def activate(self, kid: str) -> Applied:
        """Make pending ``kid`` active now (it must have been published for the lead)."""
        return await self._change(lambda s, now: lifecycle.activate(s.keys, kid, self.policy, now))

    async def retire(self, kid: str) -> Applied:
        """Withdraw pending ``kid``, or drop retiring ``kid`` whose grace is over."""
        return await self._change(lambda s, now: lifecycle.retire(s.keys, kid, self.policy, now))

    async def revoke(self, kid: str) -> Applied:
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

        applied = await self._change(build)
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

    async def _change(self, build: ChangeBuilder) -> Applied:
        applied = await self._apply(build)
        if applied is None:
            raise IllegalTransition("nothing to do")
        return applied

    async def _apply(self, build: ChangeBuilder, *, fence: int | None = None) -> Applied | None:
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snap = await self.snapshot()
            now = self.clock()
            change = build(snap, now)
            if change is None:
                return None
            try:
                return await self._commit(snap, change, now, fence=fence)
            except VersionConflict:
                logger.debug("version moved past %s; re-reading", snap.version)
        raise VersionConflict("the store kept changing; gave up")

    async def _commit(
        self,
        snap: Snapshot,
        change: Change,
        now: float,
        *,
        fence: int | None = None,
        meta: dict[str, str] | None = None,
        epoch: str | None = None,
    ) -> Applied:
        epoch = epoch or snap.epoch
        assert epoch is not None
        announce_kid, signing_key = self._announce_signer(meta or snap.meta, epoch)
        events = tuple(
            Event(
                type=spec.type,
                issuer=self.issuer,
                epoch=epoch,
                version=snap.version + offset,
                kid=spec.kid,
                ts=now,
                data=spec.data,
            )  # fmt: skip
            for offset, spec in enumerate(change.events, start=1)
        )
        after = lifecycle.updated(snap.keys, change)
        version = await self.store.commit(
            expected_version=snap.version,
            expected_epoch=snap.epoch,
            records=change.records,
            events=[sign_event(e, signing_key, announce_kid) for e in events],
            retention_s=self.policy.stream_retention_s,
            meta=meta,
            fence=fence,
            forget=forgettable(after.values(), KEEP_ENDED_RECORDS),
        )
        for event in events:
            logger.info(
                "%s kid=%s version=%s",
                event.type,
                event.kid,
                event.version,
                extra={"event": event.type, "kid": event.kid, "version": event.version},
            )
        return Applied(version=version, events=events, records=change.records)

    # -- key material ----------------------------------------------------------------------

    def _new_key(self) -> NewKey:
        pair = keygen.generate(self.policy.algorithm)
        sealed = self.kek.seal(pair.private_der(), kid=pair.kid, purpose=SIGNING_PURPOSE)
        return NewKey(kid=pair.kid, alg=pair.alg, jwk=pair.jwk, sealed=sealed)

    def _new_store_meta(self) -> dict[str, str]:
        # A store lost under a running issuer keeps its announcement key: verifiers that pinned
        # it go on trusting events, and only resync for the new epoch.
        announce = self._announce[2] if self._announce else Ed25519PrivateKey.generate()
        jwk = announcement_jwk(announce.public_key())
        raw = announce.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        sealed = self.kek.seal(raw, kid=jwk["kid"], purpose=ANNOUNCE_PURPOSE)
        return {
            "epoch": uuid.uuid4().hex,
            "issuer": self.issuer,
            "created_at": repr(self.clock()),
            "announce_kid": jwk["kid"],
            "announce_jwk": _json(jwk),
            "announce_sealed": _json(sealed),
        }

    def _announce_signer(
        self, meta: Mapping[str, str], epoch: str
    ) -> tuple[str, Ed25519PrivateKey]:
        cached = self._announce
        if cached is not None and cached[0] == epoch and cached[1] == meta.get("announce_kid"):
            return cached[1], cached[2]
        kid = meta["announce_kid"]
        raw = self.kek.open(_loads(meta["announce_sealed"]), kid=kid, purpose=ANNOUNCE_PURPOSE)
        key = Ed25519PrivateKey.from_private_bytes(raw)
        self._announce = (epoch, kid, key)
        return kid, key

    def _announce_key(self, snap: Snapshot) -> tuple[str, dict[str, Any]]:
        jwk: dict[str, Any] = _loads(snap.meta["announce_jwk"])
        return jwk["kid"], jwk


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(value: str) -> Any:
    return json.loads(value)
