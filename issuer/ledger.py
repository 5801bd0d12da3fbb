"""The signed, authenticated history of one key set: what an issuer and the upstream watcher
share of the protocol (``docs/protocol.md``).

A :class:`Ledger` keeps a key set in the Redis store (:mod:`issuer.store`), authenticated
under the KEK (:mod:`issuer.integrity`), and announces every change as chained events signed
by its Ed25519 announcement key (sealed in the store under the KEK); it signs snapshots and
freshness records with the same key. It does not decide *what* changes: a subclass builds
each :class:`~issuer.lifecycle.Change` and hands it to :meth:`Ledger._apply`.

- :class:`issuer.authority.Authority` holds the private keys and applies the rotation
  lifecycle (an empty store is bootstrapped with one active key);
- :class:`watcher.ledger.UpstreamLedger` announces the keys an identity provider publishes,
  with no private key at all (an empty store starts as an empty key set at version 0).
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import redis.asyncio as aioredis

from subscriber import redis_keys
from subscriber.clock import Clock, system_clock
from subscriber.events import KEY_SET_RESTORED, Event, sign_event
from subscriber.history import Freshness, sign_freshness

from . import lifecycle
from .announcement import AnnouncementKey
from .chain import RecentCommits, chained_events
from .errors import (
    AlreadyRecorded,
    IdempotencyRecordTampered,
    StoreTampered,
    VersionConflict,
)
from .idempotency import IdempotentRequest
from .integrity import HighWaterMark, StateMac, behind, public_digest
from .jwks import SignedSnapshot, render_snapshot
from .kek import Kek
from .lifecycle import Change
from .records import KeyRecord, forgettable
from .store import KeyStore, Snapshot, publish_freshness

#: Records of retired and revoked keys kept for the admin API's history; older ones are deleted.
KEEP_ENDED_RECORDS: Final = 32
#: Attempts at a change when other writers keep winning the compare-and-set.
MAX_COMMIT_ATTEMPTS: Final = 20
#: Signed commits this process keeps to write back should the store lose them.
RECENT_COMMITS_KEPT: Final = 256

#: Builds a change from the current snapshot and time; ``None`` means nothing to do.
ChangeBuilder = Callable[[Snapshot, float], Change | None]


@dataclass(frozen=True, slots=True)
class Applied:
    """A committed change: the version it produced and its signed events, in order."""

    version: int
    events: tuple[Event, ...]
    records: tuple[KeyRecord, ...]


class Ledger:
    """One key set's store, announcement key, chained events, snapshots and freshness.

    :param redis: an asyncio client the caller owns (either ``decode_responses`` setting).
    :param issuer: the ``iss`` whose key set this is (names every Redis key and digest).
    :param kek: seals the announcement key (and a subclass's private keys) and derives the
        key that authenticates the store.
    :param retention_s: how long events stay on the stream.
    :param state_dir: keep the high-water mark (newest authenticated state) in a file here
        too, so a restart still refuses a store that was rolled back.
    :param freshness_interval_s: how often signed freshness records are published (and how
        long a signed snapshot is reused before it is signed anew).
    """

    #: Where commits are logged; a subclass names its own module.
    log: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        issuer: str,
        kek: Kek,
        retention_s: float,
        clock: Clock = system_clock,
        state_dir: str | None = None,
        freshness_interval_s: float = 30.0,
    ) -> None:
        if not freshness_interval_s > 0:
            raise ValueError(
                f"freshness_interval_s must be greater than 0, the input is {freshness_interval_s}"
            )
        self.redis = redis
        self.issuer = issuer
        self.kek = kek
        self.clock = clock
        self.retention_s = retention_s
        self.store = KeyStore(redis, issuer)
        self._changing = asyncio.Lock()
        self.announcement = AnnouncementKey(kek, issuer, clock)
        self._mac = StateMac(kek, issuer)
        self.hwm = HighWaterMark(self._mac, state_dir)
        self.freshness_interval_s = float(freshness_interval_s)
        self._signed: SignedSnapshot | None = None
        #: Reads of the store that failed authentication (exported as a metric by the apps).
        self.tamper_count = 0
        #: Restores from the high-water mark, by reason (``store_behind``, ``tampered``, ...).
        self.restores: dict[str, int] = {}
        #: This process's newest signed commits, to append again should the store lose them.
        self.recent = RecentCommits(RECENT_COMMITS_KEPT)
        #: The newest authenticated key set and when the store was last read and checked in
        #: full: reused while the store's meta is unchanged (see :meth:`snapshot`).
        self._known: tuple[float, Snapshot] | None = None

    # -- what a subclass decides -----------------------------------------------------------

    def _complete(self, snap: Snapshot) -> bool:
        """Whether an authenticated store needs nothing before it is used."""
        return True

    async def _bootstrap_store(self) -> None:
        """Initialise an empty store: epoch and announcement key, no keys, version 0."""
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snap = await self.store.load()
            if snap.initialised:
                return
            meta = self.announcement.new_store_meta()
            sealed = self._mac.sealed_meta(meta, {}, [], version=0)
            try:
                await self.store.commit(
                    expected_version=0,
                    expected_epoch=None,
                    records=[],
                    events=[],
                    retention_s=self.retention_s,
                    meta=sealed,
                )
            except VersionConflict:
                continue
            self.log.warning(
                "initialised an empty key store: epoch %s, announcement key %s",
                meta["epoch"],
                meta["announce_kid"],
                extra={"epoch": meta["epoch"], "kid": meta["announce_kid"]},
            )
            return
        raise VersionConflict("could not initialise the store: it kept changing")

    # -- reads -----------------------------------------------------------------------------

    async def snapshot(self, *, full: bool = False) -> Snapshot:
        """The current key set, authenticated; initialises an empty store first.

        A store that does not authenticate, or that is behind what this process has seen
        (lost writes, a restored backup, a flush), is written back from the high-water mark
        as the continuation of its history.

        The store is read and authenticated in full when its meta hash (epoch, version,
        digest, MAC, announcement key) differs from the last key set this process
        authenticated or committed, and at least once per ``freshness_interval_s``; otherwise
        one ``HGETALL`` of the meta and that key set are enough. So a change costs the same
        however many ended keys the store remembers, and what a change is built on is always
        authenticated state: a record altered in Redis behind an unchanged meta is never used,
        and is found (and the store restored) at the next full read.

        :param full: read and authenticate the whole store whatever the meta says.
        :raises StoreTampered: the store does not authenticate and there is nothing to restore.
        """
        known = self._known
        held = self.hwm.snapshot
        if (
            not full
            and known is not None
            and held is not None
            # A read that raced a commit can leave an older key set here than the mark: should
            # the store go back to that state (a failover that lost the commit), it is behind.
            and known[1].meta.get("mac") == held.meta.get("mac")
            and 0 <= self.clock() - known[0] < self.freshness_interval_s
            and await self.store.meta() == known[1].meta
        ):
            return known[1]
        self._known = None
        for _ in range(MAX_COMMIT_ATTEMPTS):
            # The mark is taken before the read: a commit that finished earlier must be in what
            # Redis answers, one that lands during the read may not be (and is no loss).
            held = self.hwm.snapshot
            snap = await self.store.load()
            verdict = self._verdict(snap, held)
            if verdict is None:
                if self._complete(snap):
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
        self.announcement.signer(snap.meta, snap.epoch)
        self._known = (self.clock(), snap)
        return snap

    def _verdict(self, snap: Snapshot, held: Snapshot | None) -> str | None:
        """Why ``snap`` cannot be used as it is, or ``None``."""
        if not snap.initialised:
            return "store_empty"
        problem = self._mac.problem(snap)
        if problem is not None:
            self.announcement.check_kek(snap.meta)
            self.tamper_count += 1
            self.log.error(
                "TAMPERING: the key store does not authenticate (%s); nothing of it is used",
                problem,
                extra={"epoch": snap.epoch, "version": snap.version},
            )
            return "tampered"
        return None if held is None else behind(snap, held)

    async def _restore(self, store_snap: Snapshot, held: Snapshot, reason: str) -> None:
        """Write ``held`` (the high-water mark) back: the lost commits themselves when this
        process made them and the store is an earlier state of the same history, else the
        held state as the next version, with a ``key-set-restored`` event."""
        assert held.epoch is not None
        if reason in ("store_behind", "store_empty") and await self._replay_lost(store_snap, held):
            self.restores["replayed"] = self.restores.get("replayed", 0) + 1
            return
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
        announce_kid, signing_key = self.announcement.signer(held.meta, held.epoch)
        meta = self._mac.sealed_meta(held.meta, held.raw_keys, records, version=version)
        await self.store.commit(
            expected_version=store_snap.meta.get("version", "0"),
            expected_epoch=store_snap.epoch,
            records=records,
            events=[sign_event(event, signing_key, announce_kid)],
            retention_s=self.retention_s,
            meta=meta,
            new_version=version,
            replace=True,
        )
        self.hwm.advance(Snapshot.from_raw(meta, held.raw_keys))
        self.restores[reason] = self.restores.get(reason, 0) + 1
        self.log.error(
            "key store restored from the high-water mark (%s): epoch %s, version %s -> %s",
            reason,
            held.epoch,
            store_snap.version,
            version,
            extra={"event": KEY_SET_RESTORED, "version": version, "epoch": held.epoch},
        )
        await self.publish_freshness()

    async def _replay_lost(self, store_snap: Snapshot, held: Snapshot) -> bool:
        assert held.epoch is not None
        start = store_snap.version if store_snap.epoch == held.epoch else 0
        if store_snap.epoch not in (held.epoch, None):
            return False
        lost = self.recent.since(held.epoch, start, held.version, store_snap.meta.get("digest"))
        if not lost:
            return False
        await self.store.commit(
            expected_version=store_snap.meta.get("version", "0"),
            expected_epoch=store_snap.epoch,
            records=list(held.keys.values()),
            events=lost,
            retention_s=self.retention_s,
            meta=held.meta,
            new_version=held.version,
            replace=True,
        )
        self.log.error(
            "key store lost versions %s..%s (%s): the signed commits written back",
            start + 1,
            held.version,
            "flushed" if store_snap.epoch is None else "behind",
            extra={"version": held.version, "epoch": held.epoch},
        )
        await self.publish_freshness()
        return True

    async def announcement_jwks(self) -> list[dict[str, Any]]:
        """The public JWK(s) of the announcement key that signs stream events, derived from
        the unsealed private key (never read from Redis)."""
        snap = await self.snapshot()
        assert snap.epoch is not None
        return [self.announcement.jwk(snap.meta, snap.epoch)]

    async def signed_snapshot(self) -> SignedSnapshot:
        """The key set as a JWS signed by the announcement key; signed anew once per version
        and at least every ``freshness_interval_s``.

        A signed snapshot still young enough is served after one ``HMGET`` of the store's
        ``(epoch, version)``: it was rendered from authenticated state, and any change to the
        store moves that pair (or fails authentication when it is next read in full)."""
        cached = self._signed
        now = self.clock()
        if cached is not None and 0 <= now - cached.iat < self.freshness_interval_s:
            head = await self.store.head()
            if head == (cached.epoch, cached.version) and self.at_mark(head):
                return cached
        snap = await self.snapshot()
        if (
            cached is not None
            and (cached.epoch, cached.version) == (snap.epoch, snap.version)
            and 0 <= now - cached.iat < self.freshness_interval_s
        ):
            return cached
        assert snap.epoch is not None
        announce_kid, signing_key = self.announcement.signer(snap.meta, snap.epoch)
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

    def at_mark(self, head: tuple[str | None, int]) -> bool:
        """Whether ``head``, an ``(epoch, version)`` read from the store, is the newest state
        this process has seen. Whatever is kept by head is reused only then: a store back at
        an older head (a failover that lost a commit) is behind, not current."""
        held = self.hwm.snapshot
        return held is not None and head == (held.epoch, held.version)

    def young_signed_snapshot(self) -> SignedSnapshot | None:
        """The signed snapshot last rendered, while it may still be served as it is."""
        cached = self._signed
        if cached is not None and 0 <= self.clock() - cached.iat < self.freshness_interval_s:
            return cached
        return None

    @property
    def snapshot_ttl_s(self) -> float:
        """How long a signed snapshot is valid: a few freshness intervals, at least a minute."""
        return max(60.0, 4 * self.freshness_interval_s)

    async def publish_freshness(self) -> Freshness:
        """Append a signed freshness record: at this time the key set is (epoch, version,
        digest). The store is read and authenticated in full first, so what it vouches for
        has been checked within the interval."""
        snap = await self.snapshot(full=True)
        assert snap.epoch is not None
        record = Freshness(
            issuer=self.issuer,
            epoch=snap.epoch,
            version=snap.version,
            digest=snap.meta["digest"],
            ts=self.clock(),
        )
        announce_kid, signing_key = self.announcement.signer(snap.meta, snap.epoch)
        await publish_freshness(
            self.redis,
            redis_keys.freshness_stream(self.issuer),
            sign_freshness(record, signing_key, announce_kid),
        )
        return record

    # -- changes ---------------------------------------------------------------------------

    async def _apply(
        self,
        build: ChangeBuilder,
        *,
        fence: int | None = None,
        idempotency: IdempotentRequest | None = None,
    ) -> Applied | None:
        # Changes made by this process run one at a time: concurrent admin calls queue here
        # instead of racing each other's compare-and-set until one gives up. Other replicas'
        # changes are still met by the retries below.
        async with self._changing:
            return await self._apply_unlocked(build, fence=fence, idempotency=idempotency)

    async def _apply_unlocked(
        self,
        build: ChangeBuilder,
        *,
        fence: int | None = None,
        idempotency: IdempotentRequest | None = None,
    ) -> Applied | None:
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snap = await self.snapshot()
            now = self.clock()
            if idempotency is not None:
                # Looked up after the snapshot was read: a change made under this key before
                # then is found here (its record and its state were written together), one
                # made since meets this one in the commit script.
                self._settle(idempotency, await self.store.recorded(idempotency.name), now)
            change = build(snap, now)
            if change is None:
                return None
            try:
                return await self._commit(snap, change, now, fence=fence, idempotency=idempotency)
            except VersionConflict:
                self.log.debug("version moved past %s; re-reading", snap.version)
            except AlreadyRecorded as e:
                assert idempotency is not None
                self._settle(idempotency, e.raw, now)
        raise VersionConflict("the store kept changing; gave up")

    def _settle(self, idempotency: IdempotentRequest, raw: str | None, now: float) -> None:
        try:
            idempotency.settle(raw, now)
        except IdempotencyRecordTampered:
            self.tamper_count += 1
            raise

    async def _commit(
        self,
        snap: Snapshot,
        change: Change,
        now: float,
        *,
        fence: int | None = None,
        meta: dict[str, str] | None = None,
        epoch: str | None = None,
        idempotency: IdempotentRequest | None = None,
    ) -> Applied:
        epoch = epoch or snap.epoch
        assert epoch is not None
        base_meta = meta or snap.meta
        announce_kid, signing_key = self.announcement.signer(base_meta, epoch)
        after = lifecycle.updated(snap.keys, change)
        forget = forgettable(after.values(), KEEP_ENDED_RECORDS)
        after_records = [r for kid, r in after.items() if kid not in forget]
        raw_after = {k: v for k, v in snap.raw_keys.items() if k not in forget}
        raw_after.update((r.kid, r.to_json()) for r in change.records)
        events = chained_events(self.issuer, snap, change, epoch, now)
        new_version = snap.version + len(events)
        if events[-1].digest != public_digest(self.issuer, epoch, new_version, after_records):
            raise AssertionError("the events do not lead to the committed key set")  # a bug
        sealed = self._mac.sealed_meta(base_meta, raw_after, after_records, version=new_version)
        signed = [sign_event(e, signing_key, announce_kid) for e in events]
        applied = Applied(version=new_version, events=events, records=change.records)
        receipt = None if idempotency is None else idempotency.receipt(applied, now)
        try:
            version = await self.store.commit(
                expected_version=snap.version,
                expected_epoch=snap.epoch,
                records=change.records,
                events=signed,
                retention_s=self.retention_s,
                meta=sealed,
                fence=fence,
                forget=forget,
                receipt=receipt,
            )
        except VersionConflict:
            # redis-py sends the script again when a connection error took its reply; that
            # second run finds the version the first one moved. A store holding exactly the
            # state this commit wrote (the MAC binds version, digest and every record, and the
            # new records carry fresh randomness) means the change landed.
            if (await self.store.meta()).get("mac") != sealed["mac"]:
                raise
            version = new_version
        after_snap = Snapshot(
            version=version,
            epoch=epoch,
            keys={r.kid: r for r in after_records},
            meta=sealed,
            raw_keys=raw_after,
        )
        self.hwm.advance(after_snap)
        known = self._known
        if known is not None and known[1] is snap:
            self._known = (known[0], after_snap)
        self.recent.remember(events, signed)
        for event in events:
            self.log.info(
                "%s kid=%s version=%s",
                event.type,
                event.kid,
                event.version,
                extra={"event": event.type, "kid": event.kid, "version": event.version},
            )
        return applied
