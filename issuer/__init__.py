"""keyherald issuer: the key authority that rotates signing keys and announces every step.

Entry points: :func:`create_app` (the HTTP service), :class:`Authority` (the same operations
without HTTP), :class:`Signer` (mint tokens in-process) and :class:`Scheduler` (the transition
loop). See :mod:`issuer.app` for building the real app in a test with an injected Redis client
and a manual clock.
"""

from .app import create_app
from .auth import admin_dependency
from .authority import Applied, Authority
from .errors import (
    AlreadyApplied,
    ConfigError,
    IdempotencyError,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidIdempotencyKey,
    IssuerError,
    KekError,
    LeaseLost,
    StoreError,
    UnknownKey,
    VersionConflict,
)
from .idempotency import IdempotencyRecords, IdempotentRequest
from .jwks import JwksDocument
from .kek import Kek
from .lifecycle import Transition
from .policy import RotationPolicy
from .records import KeyRecord
from .scheduler import Scheduler
from .settings import IssuerSettings
from .signer import MintedToken, Signer
from .store import KeyStore, Snapshot, check_persistence

__all__ = [
    # services
    "Authority",
    "IdempotencyRecords",
    "Scheduler",
    "Signer",
    "admin_dependency",
    "create_app",
    # configuration
    "IssuerSettings",
    "Kek",
    "RotationPolicy",
    # data
    "Applied",
    "IdempotentRequest",
    "JwksDocument",
    "KeyRecord",
    "KeyStore",
    "MintedToken",
    "Snapshot",
    "Transition",
    "check_persistence",
    # errors
    "AlreadyApplied",
    "ConfigError",
    "IdempotencyError",
    "IdempotencyKeyReused",
    "IllegalTransition",
    "InvalidIdempotencyKey",
    "IssuerError",
    "KekError",
    "LeaseLost",
    "StoreError",
    "UnknownKey",
    "VersionConflict",
]
