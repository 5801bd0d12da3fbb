"""An upstream provider's key set, announced on keyherald's protocol by the watcher.

:class:`UpstreamLedger` is an :class:`issuer.ledger.Ledger` with no private key: its records
are the public keys the provider publishes, in one state, ``pending`` (published and
verifying: the watcher cannot know which of a provider's keys signs, and every key in a
provider's JWKS may). Each :class:`~watcher.diff.KeySetDiff` becomes one commit:

- a new kid: ``key-added`` (``activate_at`` = now, ``retire_at`` null), with the key rewritten
  as a canonical JWK (``kty`` members in base64url, the provider's ``kid``, the ``alg`` the
  loader settled on, ``use: sig``), so a verifier loads it without the provider's quirks;
- a kid absent past the hold: ``key-retired`` (reason ``expired``);
- a kid whose key material changed: ``key-retired`` (reason ``revoked``), never re-added:
  verifiers never trust a revoked kid again, and a provider does not reuse a kid on purpose.

A kid that was retired and comes back upstream is not announced again (logged).
"""

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from issuer.ledger import Applied, Ledger
from issuer.lifecycle import Change, EventSpec
from issuer.records import PENDING, PUBLISHED_STATES, RETIRED, REVOKED, KeyRecord
from issuer.store import Snapshot
from subscriber.errors import InvalidKey
from subscriber.events import KEY_ADDED, KEY_RETIRED
from subscriber.jwk import PublicKey, load_public_jwk
from subscriber.jws import b64url_encode

from .diff import KeySetDiff

__all__ = ["UpstreamLedger", "canonical_jwk", "upstream_change"]

logger = logging.getLogger(__name__)


def _int(value: int, length: int | None = None) -> str:
    return b64url_encode(value.to_bytes(length or (value.bit_length() + 7) // 8, "big"))


def canonical_jwk(key: PublicKey) -> dict[str, Any]:
    """``key`` as a plain public JWK: what verifiers load, whatever spelling the provider used."""
    public = key.key
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        jwk = {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]
        jwk = {"kty": "EC", "crv": crv, "x": _int(point.x, size), "y": _int(point.y, size)}
    else:
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    return {**jwk, "kid": key.kid, "alg": key.alg, "use": "sig"}


def upstream_change(keys: Mapping[str, KeyRecord], diff: KeySetDiff, now: float) -> Change | None:
    """The records and events that announce ``diff`` over the stored ``keys``; ``None`` when
    the store already says it all (another replica announced it first)."""
    records: list[KeyRecord] = []
    events: list[EventSpec] = []
    for kid in diff.retired:
        held = keys.get(kid)
        if held is not None and held.state in PUBLISHED_STATES:
            records.append(
                replace(held, state=RETIRED, retire_at=now, ended_at=now, reason="expired")
            )
            events.append(EventSpec(KEY_RETIRED, kid, {"reason": "expired"}))
    for key in diff.replaced:
        held = keys.get(key.kid)
        if held is not None and held.state in PUBLISHED_STATES:
            logger.error(
                "upstream key %s changed its key material: revoked, not trusted again",
                key.kid,
                extra={"kid": key.kid},
            )
            records.append(
                replace(held, state=REVOKED, retire_at=now, ended_at=now, reason="revoked")
            )
            events.append(EventSpec(KEY_RETIRED, key.kid, {"reason": "revoked"}))
    for key in diff.added:
        held = keys.get(key.kid)
        if held is not None:
            if held.state not in PUBLISHED_STATES:
                logger.warning(
                    "upstream key %s is back after it was %s: not announced again",
                    key.kid,
                    held.state,
                    extra={"kid": key.kid},
                )
            continue
        jwk = canonical_jwk(key)
        records.append(
            KeyRecord(
                kid=key.kid,
                alg=key.alg,
                state=PENDING,
                created_at=now,
                activate_at=now,
                jwk=jwk,
            )  # fmt: skip
        )
        data = {"jwk": jwk, "alg": key.alg, "activate_at": now, "retire_at": None}
        events.append(EventSpec(KEY_ADDED, key.kid, data))
    if not events:
        return None
    return Change(tuple(records), tuple(events))


class UpstreamLedger(Ledger):
    """The announced key set of one upstream issuer (see the module docstring).

    Takes the :class:`~issuer.ledger.Ledger` arguments; ``issuer`` is the upstream's ``iss``
    (the tokens' issuer), so verifiers find its stream from the token alone.
    """

    log = logger

    async def announce(self, diff: KeySetDiff, *, fence: int | None = None) -> Applied | None:
        """Commit the announcement of ``diff``; ``None`` when there was nothing new.

        :param fence: the lease's fencing token; a stale one raises
            :class:`~issuer.errors.LeaseLost` and nothing is written.
        """

        def build(snap: Snapshot, now: float) -> Change | None:
            return upstream_change(snap.keys, diff, now)

        return await self._apply(build, fence=fence)

    async def usable_keys(self) -> dict[str, PublicKey]:
        """The keys announced and not retired, parsed (to seed a new leader's tracker)."""
        snap = await self.snapshot()
        keys: dict[str, PublicKey] = {}
        for record in snap.keys.values():
            if record.state not in PUBLISHED_STATES:
                continue
            try:
                keys[record.kid] = load_public_jwk(record.jwk)
            except InvalidKey as e:  # a record we wrote ourselves: authenticated, so a bug
                logger.error("stored key %s does not load: %s", record.kid, e)
        return keys

    async def known_kids(self) -> frozenset[str]:
        """Every kid the store remembers, usable or ended."""
        snap = await self.snapshot()
        return frozenset(snap.keys)
