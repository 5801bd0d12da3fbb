"""Exceptions raised by the issuer.

One root, a shallow tree; the HTTP layer maps each leaf to one status code::

    IssuerError
    ├── ConfigError          settings or rotation policy refused at start-up     (exit)
    ├── UnknownKey           no key with that kid                                 404
    ├── IllegalTransition    the key's state does not allow that change           409
    ├── KekError             a sealed private key does not open under this KEK    500
    ├── IdempotencyError     an ``Idempotency-Key`` request that is not carried out
    │   ├── InvalidIdempotencyKey  the header is malformed                         400
    │   ├── IdempotencyKeyReused   the key's change was another request           422
    │   └── AlreadyApplied         the key's change was this request: its result  replayed
    └── StoreError           the Redis store refused a change
        ├── VersionConflict  the key-set version moved under us (retried)
        ├── LeaseLost        a newer scheduler holds the lease (fencing token stale)
        ├── AlreadyRecorded  the change's idempotency key has a record: nothing written
        └── StoreTampered    the store's state does not authenticate under the KEK   503
            └── IdempotencyRecordTampered  an idempotency record does not         503

No message ever carries key material, the KEK or the admin token.
"""


class IssuerError(Exception):
    """Root of every error the issuer raises."""


class ConfigError(IssuerError):
    """Settings or a rotation policy that cannot be used; the message names the values."""


class UnknownKey(IssuerError):
    """No key with this ``kid`` exists in the store."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"unknown kid {kid!r}")
        self.kid = kid


class IllegalTransition(IssuerError):
    """The requested change is not allowed from the key's current state."""


class KekError(IssuerError):
    """A sealed private key could not be opened: wrong KEK or tampered record."""


class IdempotencyError(IssuerError):
    """A change requested under an ``Idempotency-Key`` that is not carried out (again)."""


class InvalidIdempotencyKey(IdempotencyError):
    """The ``Idempotency-Key`` header is empty, too long, repeated or not printable ASCII."""


class IdempotencyKeyReused(IdempotencyError):
    """The key was used before for another request (method, path or body); nothing is done."""


class AlreadyApplied(IdempotencyError):
    """The change was already made under this key: the response it got, to be sent again."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"already applied under this idempotency key ({status})")
        self.status = status
        self.body = body


class StoreError(IssuerError):
    """The Redis store refused or could not apply a change."""


class VersionConflict(StoreError):
    """Another writer changed the key set first; re-read and try again."""


class LeaseLost(StoreError):
    """The scheduler's fencing token is no longer current: another replica took over."""


class AlreadyRecorded(StoreError):
    """The commit found a record under its idempotency key (written by an earlier change or
    by someone else): it wrote nothing. ``raw`` is what it found, still to authenticate."""

    def __init__(self, raw: str) -> None:
        super().__init__("the idempotency key already has a record")
        self.raw = raw


class StoreTampered(StoreError):
    """What Redis holds does not authenticate under this KEK: written by someone without it,
    or an old copy. Nothing of it is served, signed with or announced."""


class IdempotencyRecordTampered(StoreTampered):
    """The record under an ``Idempotency-Key`` does not authenticate (altered, forged, or
    copied from another key): it is not replayed, and the change is not made again."""
