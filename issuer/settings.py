"""Issuer configuration from the environment (prefix ``KEYHERALD_``), read at the entry points.

Every duration is in seconds, so a demo can rotate every few seconds. In tests, build one
directly: ``IssuerSettings(issuer="https://issuer.test", kek=..., admin_token=...)``.
"""

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from subscriber.redis_conn import RedisConfigError, RedisTarget, parse_redis_url

from .durability import Durability
from .errors import ConfigError
from .kek import Kek
from .policy import DAY_S, RotationPolicy
from .readiness import ActivationGate


def check_issuer_url(value: str) -> str:
    """``value`` if it can be an issuer URL, else :class:`ValueError` saying what to write.

    The URL is compared exactly with every token's ``iss`` and names the key store, so a
    trailing slash is refused rather than normalised: it would be a second issuer. Plain
    ``http`` is for development on this machine only (loopback), since verifiers trust the
    keys fetched from it.
    """
    example = "e.g. https://id.example.com, or http://127.0.0.1:8000 for development"
    if not value:
        raise ValueError(f"is empty: set the issuer's public URL ({example})")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"is not a URL ({e}): {example}") from e
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an https URL, the input is {value!r} ({example})")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"must be a plain base URL without query, fragment or user: {value!r}")
    if value.endswith("/"):
        raise ValueError(
            f"must not end with '/': use {value.rstrip('/')!r} (the value is compared exactly "
            "with each token's iss, and a trailing slash would be another issuer)"
        )
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IssuerSettings(BaseSettings):
    """Settings of ``keyherald issuer``; each field is ``KEYHERALD_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="KEYHERALD_", extra="ignore")

    issuer: str = Field(description="the `iss` value, also the issuer's public base URL")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis deployment holding the key store: redis://, rediss://, unix://, "
        "redis+sentinel://, redis+cluster:// (see the README's Redis table)",
    )
    kek: SecretStr | None = Field(
        None,
        description="key-encryption key, base64 of 32 random bytes; the issuer refuses to "
        "start without one",
    )
    dev_ephemeral_kek: bool = Field(
        False, description="development only: without a KEK, generate a throwaway one"
    )
    dev_http_issuer: bool = Field(
        False,
        description="development only: accept a plain-http issuer URL on a host other than "
        "loopback (docker compose's private network)",
    )
    openapi_docs: bool = Field(
        False,
        description="serve the OpenAPI document and docs at /openapi.json and /docs (off: they "
        "map the admin API for anyone who asks)",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token of the /admin API (unset: admin API answers 401)"
    )
    algorithm: str = Field(
        "ES256",
        description="signing algorithm: ES256, EdDSA, RS256, RS384, RS512, PS256, PS384, PS512, "
        "ES384 or ES512",
    )
    rotation_period_s: float = Field(90 * DAY_S, description="how long a key signs")
    lead_s: float = Field(6 * DAY_S, description="how long a key is published before it signs")
    retire_grace_s: float = Field(
        7 * DAY_S, description="how long a key still verifies after it stops signing"
    )
    max_token_ttl_s: float = Field(3_600.0, description="longest token lifetime the issuer mints")
    jwks_max_age_s: float = Field(900.0, description="Cache-Control max-age of the JWKS")
    clock_skew_s: float = Field(60.0, description="clock skew tolerated between hosts")
    tick_interval_s: float = Field(
        1.0, gt=0, description="how often the scheduler looks for due transitions"
    )
    lease_ttl_s: float = Field(
        10.0, gt=0, description="scheduler lease lifetime; a dead leader is replaced after it"
    )
    redis_timeout_s: float = Field(
        5.0, gt=0, description="socket and connect timeout of the issuer's Redis client"
    )
    min_replicas: int = Field(
        0,
        ge=0,
        description="durability: each transition is acknowledged only once this many replicas "
        "hold it (WAIT); 0 acknowledges on the primary's write",
    )
    min_replicas_timeout_s: float = Field(
        1.0,
        gt=0,
        description="how long a transition waits for min_replicas before a 503 (below "
        "redis_timeout_s)",
    )
    activation_gate: Literal["time", "confirmed"] = Field(
        "time",
        description="`time`: a key activates at its planned time; `confirmed`: also only once "
        "every live verifier holds it (from their heartbeats)",
    )
    gate_max_wait_s: float = Field(
        3_600.0, ge=0, description="how long the confirmed gate waits past the planned time"
    )
    gate_on_timeout: Literal["activate", "wait"] = Field(
        "activate",
        description="past the max wait: `activate` anyway (logged as a warning) or `wait` "
        "(logged as an error) until the verifiers catch up",
    )
    state_dir: str | None = Field(
        None,
        description="directory for the high-water mark file (a restarted issuer refuses a "
        "rolled-back store)",
    )
    freshness_interval_s: float = Field(
        30.0, gt=0, description="interval of the signed freshness records verifiers expect"
    )
    idempotency_retention_s: float = Field(
        DAY_S,
        ge=1,
        le=30 * DAY_S,
        description="how long the result of an admin change made under an Idempotency-Key is "
        "replayed to a retry with that key (each record expires after it)",
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        return check_issuer_url(value)

    @field_validator("kek")
    @classmethod
    def _kek_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                Kek.from_base64(value.get_secret_value())
            except ConfigError as e:
                raise ValueError(str(e).removeprefix("KEYHERALD_KEK ")) from None
        return value

    @model_validator(mode="after")
    def _https_outside_loopback(self) -> "IssuerSettings":
        parts = urlsplit(self.issuer)
        if parts.scheme == "http" and not (
            _is_loopback(parts.hostname or "") or self.dev_http_issuer
        ):
            # Verifiers trust the keys fetched from this URL: over plain http, anyone on the
            # path could hand them their own.
            raise ValueError(
                f"KEYHERALD_ISSUER must use https (plain http only on loopback, or with "
                f"KEYHERALD_DEV_HTTP_ISSUER=true for development), the input is {self.issuer!r}"
            )
        return self

    def policy(self) -> RotationPolicy:
        """The rotation policy.

        :raises ConfigError: an unsafe policy, with the numbers.
        """
        return RotationPolicy(
            algorithm=self.algorithm,
            rotation_period_s=self.rotation_period_s,
            lead_s=self.lead_s,
            retire_grace_s=self.retire_grace_s,
            max_token_ttl_s=self.max_token_ttl_s,
            jwks_max_age_s=self.jwks_max_age_s,
            clock_skew_s=self.clock_skew_s,
        )

    def redis_target(self) -> RedisTarget:
        """The Redis deployment.

        :raises ConfigError: a URL that cannot be used, or ``min_replicas`` with a cluster.
        """
        try:
            target = parse_redis_url(self.redis_url, setting="KEYHERALD_REDIS_URL")
        except RedisConfigError as e:
            raise ConfigError(str(e)) from e
        if self.min_replicas and self.min_replicas_timeout_s >= self.redis_timeout_s:
            raise ConfigError(
                f"KEYHERALD_MIN_REPLICAS_TIMEOUT_S ({self.min_replicas_timeout_s:g}) must be "
                f"below KEYHERALD_REDIS_TIMEOUT_S ({self.redis_timeout_s:g}): the WAIT reply "
                "arrives on the same socket"
            )
        if self.min_replicas and target.kind == "cluster":
            raise ConfigError(
                "KEYHERALD_MIN_REPLICAS is not supported with redis+cluster:// (WAIT must run "
                "on the connection that wrote); use 0, or Sentinel"
            )
        return target

    def durability(self) -> Durability | None:
        """The replica acknowledgement each transition waits for, if any."""
        if not self.min_replicas:
            return None
        return Durability(self.min_replicas, int(self.min_replicas_timeout_s * 1000))

    def gate(self) -> ActivationGate:
        """The activation gate."""
        return ActivationGate(
            mode=self.activation_gate,
            max_wait_s=self.gate_max_wait_s,
            on_timeout=self.gate_on_timeout,
        )

    def load_kek(self) -> Kek:
        """The KEK, or an ephemeral one (with a loud warning) if ``dev_ephemeral_kek``.

        :raises ConfigError: no KEK and no development flag, or a malformed KEK.
        """
        if self.kek is not None:
            return Kek.from_base64(self.kek.get_secret_value())
        if self.dev_ephemeral_kek:
            return Kek.ephemeral()
        raise ConfigError(
            "KEYHERALD_KEK is not set: the issuer will not store private keys unencrypted. "
            "Set it to base64 of 32 random bytes (e.g. `openssl rand -base64 32`), or set "
            "KEYHERALD_DEV_EPHEMERAL_KEK=1 for a throwaway development key."
        )
