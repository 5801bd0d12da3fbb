"""Relay configuration, read from the environment at the entry points (CLI, app factory).

Variables are prefixed ``KEYHERALD_RELAY_`` (``KEYHERALD_RELAY_RETRY_SCHEDULE_S='[0,5,300]'``);
every duration is in seconds. Library classes never read this: they take the plain values.
"""

import os
import socket
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Standard Webhooks' schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_RETRY_SCHEDULE_S = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


def default_consumer_name() -> str:
    """``<host>-<pid>``: unique per replica, readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RelaySettings(BaseSettings):
    """Every knob of ``keyherald relay``."""

    model_config = SettingsConfigDict(env_prefix="KEYHERALD_RELAY_", extra="ignore")

    issuer: str = Field(description="issuer URL (iss); selects the stream and JWKS")
    redis_url: str = "redis://127.0.0.1:6379/0"
    jwks_url: str | None = Field(None, description="default: <issuer>/.well-known/jwks.json")
    #: Pinned announcement JWKs (JSON list); empty means read them from the issuer metadata.
    announcement_keys: list[dict[str, Any]] = Field(default_factory=list)
    admin_token: SecretStr = Field(description="bearer token of the admin API")
    host: str = "127.0.0.1"
    port: int = 8090

    group: str = "relay"
    consumer: str = Field(default_factory=default_consumer_name)
    block_ms: int = 2_000
    poll_interval_s: float = 1.0

    retry_schedule_s: list[float] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S))
    retry_jitter: float = Field(0.1, description="up to this fraction of each delay is added")
    max_retry_after_s: float = 36_000.0
    delivery_timeout_s: float = 15.0
    idle_before_claim_s: float = 60.0
    partner_lease_s: float = 30.0
    max_attempts: int = Field(5, description="stream-entry attempts before it is dead-lettered")
    failure_disable_s: float = 5 * 86_400.0
    secret_overlap_s: float = 86_400.0
    response_max_bytes: int = 64 * 1024
    collapse: bool = True
    egress_allow: list[str] = Field(default_factory=list)

    @field_validator("retry_schedule_s")
    @classmethod
    def _schedule(cls, v: list[float]) -> list[float]:
        if not v or any(d < 0 for d in v):
            raise ValueError(f"retry schedule needs at least one non-negative delay, got {v}")
        return v

    @model_validator(mode="after")
    def _claim_after_timeout(self) -> "RelaySettings":
        # A peer must not reclaim an entry its owner may still be delivering.
        if self.idle_before_claim_s <= self.delivery_timeout_s:
            raise ValueError(
                f"idle_before_claim_s ({self.idle_before_claim_s}) must exceed "
                f"delivery_timeout_s ({self.delivery_timeout_s})"
            )
        if self.partner_lease_s <= self.delivery_timeout_s:
            raise ValueError(
                f"partner_lease_s ({self.partner_lease_s}) must exceed "
                f"delivery_timeout_s ({self.delivery_timeout_s})"
            )
        return self

    def jwks(self) -> str:
        """The JWKS URL, defaulting to the issuer's well-known path."""
        from subscriber.constants import JWKS_PATH

        return self.jwks_url or self.issuer.rstrip("/") + JWKS_PATH
