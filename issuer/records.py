"""Key records: what the store keeps per ``kid`` (public parts in clear, private key sealed)."""

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

PENDING: Final = "pending"
ACTIVE: Final = "active"
RETIRING: Final = "retiring"
RETIRED: Final = "retired"
REVOKED: Final = "revoked"
STATES: Final = (PENDING, ACTIVE, RETIRING, RETIRED, REVOKED)
#: States whose keys are in the JWKS and verify tokens.
PUBLISHED_STATES: Final = frozenset({PENDING, ACTIVE, RETIRING})


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One signing key and its lifecycle timestamps (seconds since the Unix epoch).

    ``activate_at`` and ``retire_at`` are the plan (actual once the step happened);
    ``activated_at``, ``deactivated_at`` and ``ended_at`` record what did happen.
    """

    kid: str
    alg: str
    state: str
    created_at: float
    activate_at: float | None = None
    retire_at: float | None = None
    activated_at: float | None = None
    deactivated_at: float | None = None
    ended_at: float | None = None
    #: ``expired`` or ``revoked`` once the key left the JWKS.
    reason: str | None = None
    jwk: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: The private key, AES-256-GCM sealed (see :mod:`issuer.kek`); never clear text.
    sealed: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def published(self) -> bool:
        """In the JWKS: pending, active or retiring."""
        return self.state in PUBLISHED_STATES

    def to_json(self) -> str:
        """The stored form (one HASH field per kid)."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> "KeyRecord":
        data = json.loads(raw)
        return cls(**data)

    def public_view(self) -> dict[str, Any]:
        """Everything but the sealed private key: what the admin API shows."""
        view = asdict(self)
        del view["sealed"]
        return view


def chronological(records: Iterable[KeyRecord]) -> list[KeyRecord]:
    """Oldest first: by publication, then by (planned) activation, then kid."""
    return sorted(
        records,
        key=lambda k: (k.created_at, k.activate_at if k.activate_at is not None else 0.0, k.kid),
    )


def forgettable(records: Iterable[KeyRecord], keep: int) -> list[str]:
    """Kids of ended (retired or revoked) keys beyond the ``keep`` most recently ended: their
    records can go, so the store stays small however fast keys rotate."""
    ended = sorted(
        (r for r in records if not r.published and r.ended_at is not None),
        key=lambda r: (r.ended_at or 0.0, r.kid),
        reverse=True,
    )
    return [r.kid for r in ended[keep:]]
