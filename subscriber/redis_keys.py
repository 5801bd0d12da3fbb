"""Redis key names, built in one place.

Every key of one issuer shares the hash-tag ``{<tag>}`` so the whole issuer (key records,
stream, lease, presence, relay state) lives on one Redis Cluster slot and multi-key Lua
scripts stay legal there. The tag is derived from the issuer URL so that two issuers can share
a Redis without colliding, and so that a subscriber can compute every name from the issuer
URL alone.
"""

import hashlib


def issuer_tag(issuer: str) -> str:
    """A short, brace-free tag for ``issuer`` (URLs may contain characters we do not want
    inside a hash-tag)."""
    return hashlib.sha256(issuer.encode()).hexdigest()[:16]


def _key(issuer: str, name: str) -> str:
    return f"keyherald:{{{issuer_tag(issuer)}}}:{name}"


def keys_hash(issuer: str) -> str:
    """HASH kid -> key record (JSON, private part encrypted)."""
    return _key(issuer, "keys")


def meta_hash(issuer: str) -> str:
    """HASH: ``version``, ``epoch``, the encrypted announcement key."""
    return _key(issuer, "meta")


def event_stream(issuer: str) -> str:
    """STREAM of signed key-lifecycle events."""
    return _key(issuer, "events")


def freshness_stream(issuer: str) -> str:
    """STREAM of signed freshness records (a few newest kept); verifiers XREAD it with the
    event stream in one call."""
    return _key(issuer, "fresh")


def scheduler_lease(issuer: str) -> str:
    """STRING holding ``<holder>:<fencing token>`` with a PX expiry."""
    return _key(issuer, "lease")


def scheduler_fence(issuer: str) -> str:
    """Monotonic fencing-token counter (INCR); never reset."""
    return _key(issuer, "fence")


def verifier_index(issuer: str) -> str:
    """ZSET instance id -> heartbeat expiry (ms since epoch)."""
    return _key(issuer, "verifiers")


def verifier_states(issuer: str) -> str:
    """HASH instance id -> heartbeat record (JSON)."""
    return _key(issuer, "verifier-state")


def idempotency_record(issuer: str, key: str) -> str:
    """STRING: the authenticated result of the admin change made under ``Idempotency-Key: key``
    (PX expiry). The key is hashed into the name, so that whatever printable text a client
    chose, the name stays short and plain."""
    return _key(issuer, f"idem:{hashlib.sha256(key.encode()).hexdigest()}")


def relay_key(issuer: str, name: str) -> str:
    """Namespace for the webhook relay's own keys (partners, deliveries, dead letters)."""
    return _key(issuer, f"relay:{name}")


def miss_hints(issuer: str) -> str:
    """STREAM of unknown-kid hints from live verifiers of an upstream issuer (a few kept); the
    upstream watcher reads it to fetch the provider's key set early."""
    return _key(issuer, "miss-hints")
