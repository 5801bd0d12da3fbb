"""Authenticated issuer state: nothing read back from Redis is acted on unless the KEK vouches
for it.

Every commit writes, with the records, two meta fields:

- ``digest``: the public state digest (:func:`subscriber.history.state_digest`) of the usable
  keys at the new version, the value events and snapshots carry;
- ``mac``: HMAC-SHA256, under a key derived from the KEK for this issuer, over the issuer,
  epoch, version, digest, the announcement key fields and a hash of every stored record exactly
  as written.

So a record written, changed, deleted or copied back from an older state by someone without
the KEK fails :func:`authenticate`, and the issuer refuses to serve, sign with or announce it.
What the MAC cannot tell is an authentic but *old* state (a restored backup, writes lost in a
failover): the issuer's high-water mark does (:class:`HighWaterMark`), kept in memory and,
with ``KEYHERALD_STATE_DIR``, in a file that authenticates itself the same way.
"""

import hashlib
import hmac
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from subscriber.history import DigestEntry, entry_of, state_digest
from subscriber.redis_keys import issuer_tag

from .kek import Kek
from .records import PUBLISHED_STATES, KeyRecord
from .store import Snapshot

logger = logging.getLogger(__name__)

MAC_PURPOSE: Final = "store-mac"
#: Meta fields the MAC covers (besides the records); ``mac`` itself is not among them.
MAC_FIELDS: Final = (
    "issuer",
    "epoch",
    "version",
    "digest",
    "created_at",
    "announce_kid",
    "announce_sealed",
)


def entries(records: Iterable[KeyRecord]) -> list[DigestEntry]:
    """The digest entries of the usable keys among ``records``."""
    return [
        entry_of({**r.jwk, "kid": r.kid}, r.state) for r in records if r.state in PUBLISHED_STATES
    ]


def public_digest(issuer: str, epoch: str, version: int, records: Iterable[KeyRecord]) -> str:
    """The digest verifiers compute for this key set."""
    return state_digest(issuer, epoch, version, entries(records))


class StateMac:
    """Computes and checks the ``mac`` meta field of one issuer's store."""

    def __init__(self, kek: Kek, issuer: str) -> None:
        self.issuer = issuer
        self._key = kek.derive(MAC_PURPOSE, issuer)
        self._lines: dict[tuple[str, str], bytes] = {}

    def mac(self, meta: Mapping[str, str], raw_keys: Mapping[str, str]) -> str:
        """The MAC of ``meta`` (its :data:`MAC_FIELDS`) and of every stored record."""
        records = hashlib.sha256()
        lines: dict[tuple[str, str], bytes] = {}
        for kid in sorted(raw_keys):
            key = (kid, raw_keys[kid])
            line = self._lines.get(key)
            if line is None:
                line = json.dumps(list(key)).encode() + b"\n"
            lines[key] = line
            records.update(line)
        # Each record's encoding is kept while the record is: a change re-encodes only what it
        # wrote, however many ended records the store keeps.
        self._lines = lines
        body = {name: meta.get(name) for name in MAC_FIELDS}
        body["records"] = records.hexdigest()
        message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sealed_meta(
        self,
        meta: Mapping[str, str],
        raw_keys: Mapping[str, str],
        records: Iterable[KeyRecord],
        *,
        version: int,
    ) -> dict[str, str]:
        """``meta`` at ``version`` with the ``digest`` of ``records`` and the ``mac`` over
        ``raw_keys``, the stored form of the same records."""
        out = dict(meta)
        out["version"] = str(version)
        out["digest"] = public_digest(self.issuer, out["epoch"], version, records)
        out["mac"] = self.mac(out, raw_keys)
        return out

    def problem(self, snap: Snapshot) -> str | None:
        """Why ``snap`` does not authenticate, or ``None`` when it does."""
        meta = snap.meta
        if meta.get("issuer") != self.issuer:
            return f"meta names issuer {meta.get('issuer')!r}"
        expected = meta.get("mac")
        if not expected:
            return "meta has no mac"
        if not hmac.compare_digest(expected, self.mac(meta, snap.raw_keys)):
            return "mac does not match the meta and records"
        if len(snap.keys) != len(snap.raw_keys):
            return "a record does not parse"  # unreachable with a valid MAC: defence in depth
        if any(kid != record.kid for kid, record in snap.keys.items()):
            return "a record is stored under another kid"
        return None


def behind(snap: Snapshot, held: Snapshot) -> str | None:
    """Why an authenticated ``snap`` is not a state to use beside the high-water mark
    ``held`` (``store_behind``, ``fork``, ``old_epoch``), or ``None``."""
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


def _created_at(snap: Snapshot) -> float:
    try:
        return float(snap.meta.get("created_at", "0"))
    except ValueError:
        return 0.0


class HighWaterMark:
    """The newest authenticated state this issuer has seen: ``(epoch, version, digest)`` and
    the whole store content, so a store that fell behind can be written back.

    :param state_dir: where to keep it across restarts (one file per issuer); ``None``: memory.
    """

    def __init__(self, mac: StateMac, state_dir: str | Path | None = None) -> None:
        self._mac = mac
        self.snapshot: Snapshot | None = None
        self.path = (
            None
            if state_dir is None
            else Path(state_dir) / f"keyherald-{issuer_tag(mac.issuer)}.json"
        )
        if self.path is not None:
            self.snapshot = self._read()

    def _read(self) -> Snapshot | None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            snap = Snapshot.from_raw(data["meta"], data["keys"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.error("state file %s unreadable (%s): ignored", self.path, type(e).__name__)
            return None
        problem = self._mac.problem(snap)
        if problem is not None:
            logger.error("state file %s does not authenticate (%s): ignored", self.path, problem)
            return None
        logger.info(
            "high-water mark from %s: epoch %s version %s", self.path, snap.epoch, snap.version
        )
        return snap

    def advance(self, snap: Snapshot) -> None:
        """Remember ``snap`` (already authenticated) if it is newer than what we hold."""
        held = self.snapshot
        if held is not None and held.epoch == snap.epoch and held.version >= snap.version:
            return
        self.snapshot = snap
        if self.path is not None:
            self._write(snap)

    def _write(self, snap: Snapshot) -> None:
        assert self.path is not None
        body = json.dumps({"meta": dict(snap.meta), "keys": dict(snap.raw_keys)})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keyherald-")
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            logger.error("could not write the state file %s: %s", self.path, e)
