"""What changed between two key sets of one upstream: pure, driven by the caller's clock.

A new ``kid`` is announced at once (a provider that publishes ahead wants it known early; one
that signs at once needs it known now). A ``kid`` that disappears is retired only after it has
stayed absent for ``hold_s``: edges of a provider's CDN flap between an older and a newer set
for a while after a rotation, and retiring on the first miss would drop a key that still
signs. A ``kid`` that comes back inside the hold is simply kept. A ``kid`` whose key material
changes is reported as ``replaced``: a provider never does that on purpose, and a watcher
must not keep verifying with the old material.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from subscriber.jwk import PublicKey

__all__ = ["KeySetDiff", "KeySetTracker"]


@dataclass(frozen=True, slots=True)
class KeySetDiff:
    """Changes to announce after one poll."""

    added: tuple[PublicKey, ...] = ()
    retired: tuple[str, ...] = ()
    replaced: tuple[PublicKey, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.retired or self.replaced)


@dataclass
class KeySetTracker:
    """The keys a watcher has announced for one upstream, and since when each has been absent.

    :param hold_s: how long a kid must stay absent before it is retired.
    :raises ValueError: a negative or non-finite hold.
    """

    hold_s: float
    #: kid -> key, every key announced and not retired.
    current: dict[str, PublicKey] = field(default_factory=dict)
    #: kid -> when it was first seen missing (only kids still in ``current``).
    absent_since: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.hold_s < math.inf:
            raise ValueError(
                f"hold_s must be a number of seconds >= 0, the input is {self.hold_s!r}"
            )

    def update(self, seen: Mapping[str, PublicKey], now: float) -> KeySetDiff:
        """Record the set seen at ``now`` and return what to announce."""
        added, replaced = [], []
        for kid, key in seen.items():
            self.absent_since.pop(kid, None)
            held = self.current.get(kid)
            if held is None:
                added.append(key)
            elif held.jwk != key.jwk and _material(held) != _material(key):
                replaced.append(key)
            self.current[kid] = key
        retired = []
        for kid in [k for k in self.current if k not in seen]:
            since = self.absent_since.setdefault(kid, now)
            if now - since >= self.hold_s:
                retired.append(kid)
                del self.current[kid]
                del self.absent_since[kid]
        return KeySetDiff(tuple(added), tuple(retired), tuple(replaced))

    def due_s(self, now: float) -> float | None:
        """Seconds until the next absent kid's hold ends (``None`` when none is absent)."""
        if not self.absent_since:
            return None
        return max(0.0, min(self.absent_since.values()) + self.hold_s - now)


def _material(key: PublicKey) -> tuple[str, bytes]:
    # Two spellings of one JWK (member order, x5c added) must not read as a new key.
    return key.alg, key.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
