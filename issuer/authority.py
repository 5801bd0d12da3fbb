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

import contextlib
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
from subscriber.events import KEY_SET_RESTORED, Event, announcement_jwk, sign_event
from subscriber.history import Freshness, advance, sign_freshness, state_digest

from . import keygen, lifecycle
from .errors import IllegalTransition, KekError, StoreTampered, UnknownKey, VersionConflict
from .integrity import HighWaterMark, StateMac, entries, public_digest
from .jwks import (
    JwksDocument,
    SignedSnapshot,
    jwks_uri,
    render_jwks,
    render_snapshot,
    snapshot_uri,
)
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
from .store import KeyStore, Snapshot, publish_freshness

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
    :param state_dir: keep the high-water mark (newest authenticated state) in a file here too,
        so a restarted issuer still refuses a store that was rolled back.
    :param freshness_interval_s: how often signed freshness records are published (and how
        long a signed snapshot is reused before it is signed anew).
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
        state_dir: str | None = None,
        freshness_interval_s: float = 30.0,
    ) -> None:
        if not freshness_interval_s > 0:
            raise ValueError(
                f"freshness_interval_s must be greater than 0, the input is {freshness_interval_s}"
            )
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
        self._mac = StateMac(kek, issuer)
        self.hwm = HighWaterMark(self._mac, state_dir)
        self.freshness_interval_s = float(freshness_interval_s)
        self._signed: SignedSnapshot | None = None
        #: Reads of the store that failed authentication (exported as a metric by the app).
        self.tamper_count = 0

    # -- reads -----------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """The current key set, authenticated; bootstraps an empty store first.

        A store that does not authenticate, or that is behind what this issuer has seen (lost
        writes, a restored backup, a flush), is written back from the high-water mark as the
        continuation of its history.

        :raises StoreTampered: the store does not authenticate and there is nothing to restore.
        """
        for _ in range(MAX_COMMIT_ATTEMPTS):
            # The mark is taken before the read: a commit that finished earlier must be in what
            # Redis answers, one that lands during the read may not be (and is no loss).
            held = self.hwm.snapshot
            snap = await self.store.load()
            verdict = self._verdict(snap, held)
            if verdict is None:
                if lifecycle.active_key(snap.keys) is not None:
                    break
                await self._bootstrap_store()
            elif held is not None:
                with contextlib.suppress(VersionConflict):
                    await self._restore(snap, held, verdict)
            elif verdict == "store_empty":
                await self._bootstrap_store()
            else:
                raise StoreTampered(f"the key store does not authenticate: {verdict}")
        else:
            raise VersionConflict("the store kept changing; gave up")
        assert snap.epoch is not None
        self.hwm.advance(snap)
        # Unsealing at first read finds a wrong KEK at start-up, and keeps the announcement key
        # in memory should the store ever be lost.
        self._announce_signer(snap.meta, snap.epoch)
        return snap

    def _verdict(self, snap: Snapshot, held: Snapshot | None) -> str | None:
        """Why ``snap`` cannot be used as it is, or ``None``."""
        if not snap.initialised:
            return "store_empty"
        problem = self._mac.problem(snap)
        if problem is not None:
            self._check_kek(snap.meta)
            self.tamper_count += 1
            logger.error(
                "TAMPERING: the key store does not authenticate (%s); nothing of it is used",
                problem,
                extra={"epoch": snap.epoch, "version": snap.version},
            )
            return "tampered"
        if held is None:
            return None
        if snap.epoch == held.epoch:
            if snap.version < held.version:
                return "store_behind"
            if snap.version == held.version and snap.meta.get("digest") != held.meta["digest"]:
                return "fork"
            return None
        # Another epoch that authenticates: newer (another replica rebuilt a lost store) is
        # followed; older is a restored backup of a history we already left.
        if _created_at(snap) > _created_at(held):
            return None
        return "old_epoch"

    async def _restore(self, store_snap: Snapshot, held: Snapshot, reason: str) -> None:
        """Write ``held`` (the high-water mark) back as the next version of its history."""
        assert held.epoch is not None
        same_epoch = store_snap.epoch == held.epoch
        version = max(held.version, store_snap.version if same_epoch else 0) + 1
        records = list(held.keys.values())
        active = lifecycle.active_key(held.keys)
        now = self.clock()
        event = Event(
            type=KEY_SET_RESTORED,
            issuer=self.issuer,
            epoch=held.epoch,
            version=version,
            kid=active.kid if active is not None else "",
            ts=now,
            data={"reason": reason},
            prev=held.meta["digest"],
            digest=public_digest(self.issuer, held.epoch, version, records),
        )
        announce_kid, signing_key = self._announce_signer(held.meta, held.epoch)
        meta = self._mac.sealed_meta(held.meta, held.raw_keys, records, version=version)
        await self.store.commit(
            expected_version=store_snap.meta.get("version", "0"),
            expected_epoch=store_snap.epoch,
            records=records,
            events=[sign_event(event, signing_key, announce_kid)],
            retention_s=self.policy.stream_retention_s,
            meta=meta,
            new_version=version,
            replace=True,
        )
        self.hwm.advance(Snapshot.from_raw(meta, held.raw_keys))
        logger.error(
            "key store restored from the high-water mark (%s): epoch %s, version %s -> %s",
            reason,
            held.epoch,
            store_snap.version,
            version,
            extra={"event": KEY_SET_RESTORED, "version": version, "epoch": held.epoch},
        )
        await self.publish_freshness()

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
        """The public JWK(s) of the announcement key that signs stream events, derived from
        the unsealed private key (never read from Redis)."""
        snap = await self.snapshot()
        return [self._announce_jwk(snap)]

    async def signed_snapshot(self) -> SignedSnapshot:
        """The key set as a JWS signed by the announcement key; signed anew once per version
        and at least every ``freshness_interval_s``."""
        snap = await self.snapshot()
        now = self.clock()
        cached = self._signed
        if (
            cached is not None
            and (cached.epoch, cached.version) == (snap.epoch, snap.version)
            and 0 <= now - cached.iat < self.freshness_interval_s
        ):
            return cached
        assert snap.epoch is not None
        announce_kid, signing_key = self._announce_signer(snap.meta, snap.epoch)
        self._signed = render_snapshot(
            snap,
            issuer=self.issuer,
            now=now,
            ttl_s=self.snapshot_ttl_s,
            freshness_interval_s=self.freshness_interval_s,
            signing_key=signing_key,
            announce_kid=announce_kid,
        )
        return self._signed

    @property
    def snapshot_ttl_s(self) -> float:
        """How long a signed snapshot is valid: a few freshness intervals, at least a minute."""
        return max(60.0, 4 * self.freshness_interval_s)

    async def publish_freshness(self) -> Freshness:
        """Append a signed freshness record: at this time the key set is (epoch, version,
        digest)."""
        snap = await self.snapshot()
        assert snap.epoch is not None
        record = Freshness(
            issuer=self.issuer,
            epoch=snap.epoch,
            version=snap.version,
            digest=snap.meta["digest"],
            ts=self.clock(),
        )
        announce_kid, signing_key = self._announce_signer(snap.meta, snap.epoch)
        await publish_freshness(
            self.redis,
            redis_keys.freshness_stream(self.issuer),
            sign_freshness(record, signing_key, announce_kid),
        )
        return record

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
                "announcement_keys": [self._announce_jwk(snap)],
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
            return
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
        base_meta = meta or snap.meta
        announce_kid, signing_key = self._announce_signer(base_meta, epoch)
        after = lifecycle.updated(snap.keys, change)
        forget = forgettable(after.values(), KEEP_ENDED_RECORDS)
        after_records = [r for kid, r in after.items() if kid not in forget]
        raw_after = {k: v for k, v in snap.raw_keys.items() if k not in forget}
        raw_after.update((r.kid, r.to_json()) for r in change.records)
        events = self._chained_events(snap, change, epoch, now)
        new_version = snap.version + len(events)
        if events[-1].digest != public_digest(self.issuer, epoch, new_version, after_records):
            raise AssertionError("the events do not lead to the committed key set")  # a bug
        sealed = self._mac.sealed_meta(base_meta, raw_after, after_records, version=new_version)
        version = await self.store.commit(
            expected_version=snap.version,
            expected_epoch=snap.epoch,
            records=change.records,
            events=[sign_event(e, signing_key, announce_kid) for e in events],
            retention_s=self.policy.stream_retention_s,
            meta=sealed,
            fence=fence,
            forget=forget,
        )
        self.hwm.advance(Snapshot.from_raw(sealed, raw_after))
        for event in events:
            logger.info(
                "%s kid=%s version=%s",
                event.type,
                event.kid,
                event.version,
                extra={"event": event.type, "kid": event.kid, "version": event.version},
            )
        return Applied(version=version, events=events, records=change.records)

    def _chained_events(
        self, snap: Snapshot, change: Change, epoch: str, now: float
    ) -> tuple[Event, ...]:
        # Each event's digest is computed by the same rule verifiers apply (history.advance),
        # starting from the digest of the state this change was built on.
        state = {e[0]: e for e in entries(snap.keys.values())} if snap.epoch == epoch else {}
        prev = state_digest(self.issuer, epoch, snap.version, state.values())
        events: list[Event] = []
        for offset, spec in enumerate(change.events, start=1):
            version = snap.version + offset
            draft = Event(
                type=spec.type, issuer=self.issuer, epoch=epoch, version=version,
                kid=spec.kid, ts=now, data=spec.data,
            )  # fmt: skip
            state = advance(state, draft)
            digest = state_digest(self.issuer, epoch, version, state.values())
            events.append(
                Event(
                    type=spec.type,
                    issuer=self.issuer,
                    epoch=epoch,
                    version=version,
                    kid=spec.kid,
                    ts=now,
                    data=spec.data,
                    event_id=draft.event_id,
                    prev=prev,
                    digest=digest,
                )  # fmt: skip
            )
            prev = digest
        return tuple(events)

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

    def _check_kek(self, meta: Mapping[str, str]) -> None:
        # A store sealed under another KEK fails authentication too; that is a configuration
        # mistake to name, not tampering to repair.
        try:
            kek_id = _loads(meta.get("announce_sealed", "{}")).get("kek_id")
        except (ValueError, AttributeError):
            return
        if isinstance(kek_id, str) and kek_id != self.kek.kek_id:
            raise KekError(
                f"the key store is sealed under KEK id {kek_id!r}, "
                f"the configured KEK has id {self.kek.kek_id!r}"
            )

    def _announce_jwk(self, snap: Snapshot) -> dict[str, Any]:
        assert snap.epoch is not None
        _, key = self._announce_signer(snap.meta, snap.epoch)
        return announcement_jwk(key.public_key())


def _created_at(snap: Snapshot) -> float:
    try:
        return float(snap.meta.get("created_at", "0"))
    except ValueError:
        return 0.0


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(value: str) -> Any:
    return json.loads(value)
