"""``Idempotency-Key`` on the admin changes (draft-ietf-httpapi-idempotency-key-header, with
Stripe's semantics): a retried request gets the first one's result, and the key set changes once.

The result of a change made under a key is written by the commit script itself, atomically
with the change (:class:`~issuer.store.Receipt`), so a change and its record are both present
or both absent whatever crashes or reply is lost. What is stored is the response (status and
body), bound by an HMAC under a KEK-derived key to the issuer, the key, the request's
fingerprint (method, path, query, body) and its expiry; Redis is not trusted to keep it
honest. Opening a record gives one of:

- nothing, or an authentic record past its expiry: the change is made (an expired record is
  replaced only if it is still exactly what was read);
- an authentic record of this request: :class:`~issuer.errors.AlreadyApplied`, replayed;
- an authentic record of another request: :class:`~issuer.errors.IdempotencyKeyReused` (422);
- anything else: :class:`~issuer.errors.IdempotencyRecordTampered`, neither replayed nor
  made again.

Only a change leaves a record. A request refused with a 404 or 409 changed nothing, and its
retry is decided afresh; a 503 after the commit (``not_replicated``, or a reply lost on the way)
left the change and its record, and the retry gets the change's answer.

The same key sent again while its first request is still running is not refused with a 409:
both run, one commits, and both answer with its result. Within an issuer, changes queue on its
change lock; across issuer replicas, the version compare-and-set orders the two commits, and
the later one finds the earlier one's record (looked up after the key set is read, and checked
again by the commit script). No lock key is needed, so none can be left held by an issuer that
crashed, and a client never has to tell "in progress" from "done".
"""

import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from subscriber import redis_keys

from .errors import (
    AlreadyApplied,
    IdempotencyKeyReused,
    IdempotencyRecordTampered,
    InvalidIdempotencyKey,
)
from .kek import Kek
from .store import Receipt

if TYPE_CHECKING:
    from .ledger import Applied

logger = logging.getLogger(__name__)

HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
MAX_KEY_CHARS: Final = 255
RECORD_PURPOSE: Final = "idempotency-record"
_FORMAT: Final = 1


def parse_key(values: Sequence[str]) -> str | None:
    """The key of a request's ``Idempotency-Key`` header values; ``None`` when it has none.

    Both the draft's structured-field string (``"8e03978e-…"``, quoted) and Stripe's bare
    token are accepted, and mean the same key.

    :raises InvalidIdempotencyKey: repeated, empty, longer than 255 characters, or with a
        character outside printable ASCII.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKey(f"{HEADER} is sent {len(values)} times; send it once")
    value = values[0].strip(" \t")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _unquote(value[1:-1])
    if not 1 <= len(value) <= MAX_KEY_CHARS:
        raise InvalidIdempotencyKey(
            f"{HEADER} must be 1 to {MAX_KEY_CHARS} characters, the input has {len(value)}"
        )
    bad = next((c for c in value if not " " <= c <= "~"), None)
    if bad is not None:
        raise InvalidIdempotencyKey(
            f"{HEADER} must be printable ASCII, the input holds {bad!r} (a UUID is a good key)"
        )
    return value


def _unquote(inner: str) -> str:
    # RFC 8941 sf-string: only \" and \\ are escapes, and no bare quote inside.
    out: list[str] = []
    escaped = False
    for c in inner:
        if escaped and c not in '"\\' or not escaped and c == '"':
            raise InvalidIdempotencyKey(f"{HEADER} is not a valid quoted string")
        if not escaped and c == "\\":
            escaped = True
            continue
        out.append(c)
        escaped = False
    if escaped:
        raise InvalidIdempotencyKey(f"{HEADER} is not a valid quoted string")
    return "".join(out)


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two requests the same request under one key."""
    parts = [method.upper(), path, query, hashlib.sha256(body).hexdigest()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class IdempotencyRecords:
    """Seals and opens the records of one issuer's idempotent admin changes.

    :param kek: derives the records' MAC key (its own purpose, bound to ``issuer``).
    :param retention_s: how long a result is replayed (``KEYHERALD_IDEMPOTENCY_RETENTION_S``).
    """

    def __init__(self, kek: Kek, issuer: str, *, retention_s: float) -> None:
        if not retention_s > 0:
            raise ValueError(f"retention_s must be greater than 0, the input is {retention_s}")
        self.issuer = issuer
        self.retention_s = float(retention_s)
        self._key = kek.derive(RECORD_PURPOSE, issuer)

    def request(
        self,
        key: str,
        *,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        status: int,
        render: Callable[["Applied"], bytes],
    ) -> "IdempotentRequest":
        """One request made under ``key`` (already checked by :func:`parse_key`).

        :param status: the status a change made by it answers with.
        :param render: the response body of a change (what a retry gets again).
        """
        return IdempotentRequest(
            self, key, method, path, fingerprint(method, path, query, body), status, render
        )

    def mac(self, payload: str) -> str:
        """HMAC-SHA256 of a record's payload, hex."""
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()


class IdempotentRequest:
    """One admin change requested under an ``Idempotency-Key``: what its record says, how it
    is written with the change, and what a record found under its key means."""

    def __init__(
        self,
        records: IdempotencyRecords,
        key: str,
        method: str,
        path: str,
        request_fingerprint: str,
        status: int,
        render: Callable[["Applied"], bytes],
    ) -> None:
        self._records = records
        self.key = key
        self.method = method
        self.path = path
        self.fingerprint = request_fingerprint
        self.status = status
        self._render = render
        #: Where the record lives in Redis.
        self.name = redis_keys.idempotency_record(records.issuer, key)
        #: An authentic record found past its expiry: the commit may overwrite exactly it.
        self.replaces: str | None = None

    def receipt(self, applied: "Applied", now: float) -> Receipt:
        """The record of ``applied`` (this request's change, not committed yet), to be
        written by the commit itself."""
        retention_s = self._records.retention_s
        payload = json.dumps(
            {
                "v": _FORMAT,
                "issuer": self._records.issuer,
                "key": self.key,
                "request": self.fingerprint,
                "method": self.method,
                "path": self.path,
                "status": self.status,
                "body": self._render(applied).decode(),
                "version": applied.version,
                "created_at": now,
                "expires_at": now + retention_s,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return Receipt(
            key=self.name,
            value=f"{self._records.mac(payload)}.{payload}",
            ttl_ms=math.ceil(retention_s * 1000),
            replaces=self.replaces,
        )

    def settle(self, raw: str | None, now: float) -> None:
        """Decide what the record ``raw`` found under this key means; return only when this
        request is still to be carried out.

        :raises AlreadyApplied: it records this very request: its response is replayed.
        :raises IdempotencyKeyReused: it records another request under the same key.
        :raises IdempotencyRecordTampered: it does not authenticate as this issuer's record
            of this key (logged as tampering).
        """
        self.replaces = None
        if raw is None:
            return
        record = self._open(raw)
        if not now < float(record["expires_at"]):
            self.replaces = raw
            return
        if record["request"] != self.fingerprint:
            raise IdempotencyKeyReused(
                f"{HEADER} {self.key!r} was used for another request "
                f"({record['method']} {record['path']}, or another body) less than "
                f"{self._records.retention_s:g} s ago; use a new key for this one"
            )
        raise AlreadyApplied(int(record["status"]), str(record["body"]).encode())

    def _open(self, raw: str) -> dict[str, Any]:
        mac, _, payload = raw.partition(".")
        try:
            authentic = hmac.compare_digest(mac, self._records.mac(payload))
            record = json.loads(payload) if authentic else None
        except (TypeError, ValueError):
            authentic, record = False, None
        problem = None
        if not authentic or not isinstance(record, dict):
            problem = "mac does not match"
        elif record.get("v") != _FORMAT:
            problem = f"unknown format {record.get('v')!r}"
        elif record.get("issuer") != self._records.issuer or record.get("key") != self.key:
            problem = "it records another key"  # a genuine record copied under this key's name
        if problem is not None:
            logger.error(
                "TAMPERING: the idempotency record for %s %s does not authenticate (%s): "
                "neither replayed nor carried out again",
                self.method,
                self.path,
                problem,
                extra={"event": "idempotency-record-tampered"},
            )
            raise IdempotencyRecordTampered(
                f"the stored result of this {HEADER} does not authenticate ({problem})"
            )
        assert isinstance(record, dict)
        return record
