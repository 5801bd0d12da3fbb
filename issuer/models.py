"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .authority import Applied
from .lifecycle import Transition
from .records import KeyRecord


class KeyView(BaseModel):
    """One key: its state and lifecycle timestamps (seconds since the Unix epoch)."""

    kid: str
    alg: str
    state: str = Field(description="pending, active, retiring, retired or revoked")
    created_at: float = Field(description="published (key-added)")
    activate_at: float | None = Field(description="planned activation, or actual once active")
    retire_at: float | None = Field(description="planned or scheduled removal from the JWKS")
    activated_at: float | None
    deactivated_at: float | None
    ended_at: float | None = Field(description="retired or revoked at")
    reason: str | None = Field(description="expired or revoked, once ended")
    jwk: dict[str, Any] = Field(description="public JWK")

    @classmethod
    def of(cls, record: KeyRecord) -> "KeyView":
        return cls(**record.public_view())


class EventView(BaseModel):
    """An announced event."""

    type: str
    kid: str
    version: int
    event_id: str


class ChangeView(BaseModel):
    """The result of a change: the new key-set version, its events and the keys it touched."""

    version: int
    events: list[EventView]
    keys: list[KeyView]

    @classmethod
    def of(cls, applied: Applied) -> "ChangeView":
        return cls(
            version=applied.version,
            events=[
                EventView(type=e.type, kid=e.kid, version=e.version, event_id=e.event_id)
                for e in applied.events
            ],
            keys=[KeyView.of(r) for r in applied.records],
        )


class PlannedTransition(BaseModel):
    """An upcoming transition if nobody intervenes."""

    action: str = Field(description="add, activate, retire (or bootstrap)")
    at: float = Field(description="when it is due (seconds since the Unix epoch)")
    kid: str | None = Field(description="null for a key that does not exist yet")

    @classmethod
    def of(cls, transition: Transition) -> "PlannedTransition":
        return cls(action=transition.action, at=transition.at, kid=transition.kid)


class PlanView(BaseModel):
    """The issuer's upcoming transitions."""

    now: float
    version: int
    transitions: list[PlannedTransition]


class TokenRequest(BaseModel):
    """A token to mint with the active key."""

    model_config = ConfigDict(extra="forbid")

    sub: str = Field(min_length=1, max_length=256)
    aud: str | list[str] = Field(description="audience(s)")
    ttl_s: int = Field(gt=0, description="lifetime in seconds, at most the max token TTL")
    claims: dict[str, Any] = Field(
        default_factory=dict, description="extra claims; iss, iat, nbf and exp are reserved"
    )


class TokenResponse(BaseModel):
    """A minted token."""

    token: str
    kid: str
    exp: int


class ErrorView(BaseModel):
    """Every 4xx body: a human ``detail`` and a stable ``error`` code."""

    detail: str
    error: str
