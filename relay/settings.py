"""Relay configuration, read from the environment at the entry points (CLI, app factory).

Variables are prefixed ``KEYHERALD_RELAY_`` (``KEYHERALD_RELAY_RETRY_SCHEDULE_S='[0,5,300]'``);
every duration is in seconds. Library classes never read this: they take the plain values.
"""

import os
import socket
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import constants

DEFAULT_RETRY_SCHEDULE_S = constants.retry_schedule_s


def default_consumer_name() -> str:
    """``<host>-<pid>``: unique per replica, readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RelaySettings(BaseSettings):
    """Every knob of ``keyherald relay``."""

    model_config = SettingsConfigDict(env_prefix="KEYHERALD_RELAY_", extra="ignore")

    issuer: str = Field(description="issuer URL (iss); selects the stream and JWKS")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="the issuer's Redis deployment (redis://, rediss://, redis+sentinel://, "
        "redis+cluster://; see the README's Redis table)",
    )
    snapshot_url: str | None = Field(
        None,
        description="the issuer's signed key-set snapshot; default: "
        "<issuer>/.well-known/keyherald-snapshot.jwt",
    )
    announcement_keys: list[dict[str, Any]] = Field(
        default_factory=list,
        description="pinned announcement JWKs (JSON list); empty: from the issuer metadata",
    )
    admin_token: SecretStr = Field(description="bearer token of the admin API")
    kek: SecretStr | None = Field(
        None,
        description="key-encryption key of the partner secrets at rest, base64 of 32 random "
        "bytes (unset: stored in clear, with a warning)",
    )
    host: str = Field("127.0.0.1", description="admin API bind address")
    port: int = Field(8090, description="admin API port")

    group: str = Field("relay", description="consumer group on the event stream")
    consumer: str = Field(
        default_factory=default_consumer_name,
        description="this replica's consumer name; keep it stable across restarts",
    )
    block_ms: int = Field(constants.block_ms, description="XREADGROUP BLOCK, milliseconds")
    poll_interval_s: float = Field(
        constants.poll_interval_s, description="how often to look for peers' queued work"
    )

    retry_schedule_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S),
        description="wait before each attempt (JSON list); its length bounds the attempts",
    )
    retry_jitter: float = Field(
        constants.retry_jitter, description="up to this fraction of each wait is added"
    )
    max_retry_after_s: float = Field(
        constants.max_retry_after_s, description="cap on a partner's Retry-After"
    )
    delivery_timeout_s: float = Field(
        constants.delivery_timeout_s, description="total deadline of one attempt"
    )
    idle_before_claim_s: float = Field(
        constants.idle_before_claim_s,
        description="take over a peer's stream entries idle this long (> delivery timeout)",
    )
    partner_lease_s: float = Field(
        constants.partner_lease_s,
        description="one replica's hold on a partner's queue (> delivery timeout)",
    )
    max_attempts: int = Field(
        constants.max_entry_attempts, description="hand-outs of a stream entry before dead-letter"
    )
    failure_disable_s: float = Field(
        constants.failure_disable_s,
        description="disable a partner failing without one success for this long",
    )
    secret_overlap_s: float = Field(
        constants.secret_overlap_s, description="a replaced secret keeps signing this long"
    )
    response_max_bytes: int = Field(
        constants.response_max_bytes, description="bytes of a partner's answer read at most"
    )
    collapse: bool = Field(
        False,
        description="let one delivery stand for the queued events its full key set covers "
        "(listed in data.events; a revocation always goes alone); off: one delivery per event",
    )
    egress_allow: list[str] = Field(
        default_factory=list,
        description="networks exempt from egress checks, plain http allowed (JSON list)",
    )

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

    def snapshot(self) -> str:
        """The snapshot URL, defaulting to the issuer's well-known path."""
        from subscriber.constants import SNAPSHOT_PATH

        return self.snapshot_url or self.issuer.rstrip("/") + SNAPSHOT_PATH
