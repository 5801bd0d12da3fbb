"""Exceptions raised by the issuer.

One root, a shallow tree; the HTTP layer maps each leaf to one status code::

    IssuerError
    ├── ConfigError          settings or rotation policy refused at start-up     (exit)
    ├── UnknownKey           no key with that kid                                 404
    ├── IllegalTransition    the key's state does not allow that change           409
    ├── KekError             a sealed private key does not open under this KEK    500
    └── StoreError           the Redis store refused a change
        ├── VersionConflict  the key-set version moved under us (retried)
        ├── LeaseLost        a newer scheduler holds the lease (fencing token stale)
        └── StoreTampered    the store's state does not authenticate under the KEK   503

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


class StoreError(IssuerError):
    """The Redis store refused or could not apply a change."""


class VersionConflict(StoreError):
    """Another writer changed the key set first; re-read and try again."""


class LeaseLost(StoreError):
    """The scheduler's fencing token is no longer current: another replica took over."""


class StoreTampered(StoreError):
    """What Redis holds does not authenticate under this KEK: written by someone without it,
    or an old copy. Nothing of it is served, signed with or announced."""
