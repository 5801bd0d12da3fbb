"""keyherald subscriber: verify JWTs against a key cache the issuer's stream keeps warm.

::

    from subscriber import InvalidToken, Verifier

    async with Verifier(issuer="https://id.example.com", audience="orders-api",
                        redis_url="redis://127.0.0.1:6379/0") as verifier:
        claims = verifier.verify(token)

The FastAPI dependency lives in :mod:`subscriber.fastapi` (it needs FastAPI installed).
"""

from .clock import Clock, ManualClock, system_clock
from .errors import (
    BadSignature,
    EventError,
    FetchError,
    InvalidClaims,
    InvalidKey,
    InvalidToken,
    KeyheraldError,
    KeyNotFound,
    KeyNotUsable,
    MalformedToken,
)
from .events import Event, parse_event
from .health import Health
from .jwk import PublicKey, load_public_jwk
from .keyset import KeySet, KeyView, Outcome
from .sync import SyncVerifier
from .token_cache import TokenCache
from .verifier import Verifier
from .verify import VerifyOptions, verify_token

__all__ = [
    # verifiers
    "Health",
    "SyncVerifier",
    "Verifier",
    # errors
    "BadSignature",
    "EventError",
    "FetchError",
    "InvalidClaims",
    "InvalidKey",
    "InvalidToken",
    "KeyNotFound",
    "KeyNotUsable",
    "KeyheraldError",
    "MalformedToken",
    # building blocks
    "Clock",
    "Event",
    "KeySet",
    "KeyView",
    "ManualClock",
    "Outcome",
    "PublicKey",
    "TokenCache",
    "VerifyOptions",
    "load_public_jwk",
    "parse_event",
    "system_clock",
    "verify_token",
]
