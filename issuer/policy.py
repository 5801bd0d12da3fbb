"""The rotation policy: how often keys rotate and how long each stage lasts, checked for safety.

Two inequalities make a rotation invisible to token holders:

- ``lead_s >= jwks_max_age_s + clock_skew_s``: a verifier that cached the JWKS just before a key
  was published has refreshed before the key signs anything;
- ``retire_grace_s >= max_token_ttl_s + jwks_max_age_s + clock_skew_s``: the last token the old
  key signed expires before any verifier can have dropped the key.
"""

from dataclasses import dataclass

from subscriber.jwk import SUPPORTED_ALGS

from .errors import ConfigError

DAY_S = 86_400.0
#: Events stay on the stream at least this long, even with a demo policy of seconds.
MIN_STREAM_RETENTION_S = DAY_S


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Durations, in seconds, of each stage of a key's life. Refused at construction if unsafe.

    :raises ConfigError: a non-positive duration, an unsupported algorithm, a lead or grace
        too short to be safe, or a lead not shorter than the rotation period. The message names
        the numbers.
    """

    algorithm: str = "ES256"
    rotation_period_s: float = 90 * DAY_S
    lead_s: float = 6 * DAY_S
    retire_grace_s: float = 7 * DAY_S
    max_token_ttl_s: float = 3_600.0
    jwks_max_age_s: float = 900.0
    clock_skew_s: float = 60.0

    def __post_init__(self) -> None:
        if self.algorithm not in SUPPORTED_ALGS:
            raise ConfigError(
                f"algorithm must be one of {', '.join(SUPPORTED_ALGS)}, the input is "
                f'"{self.algorithm}"'
            )
        for name in ("rotation_period_s", "lead_s", "retire_grace_s", "max_token_ttl_s"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{name} must be greater than 0, the input is {value}")
        for name in ("jwks_max_age_s", "clock_skew_s"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"{name} must not be negative, the input is {value}")
        min_lead = self.jwks_max_age_s + self.clock_skew_s
        if self.lead_s < min_lead:
            raise ConfigError(
                f"unsafe policy: lead_s={self.lead_s:g} is shorter than jwks_max_age_s="
                f"{self.jwks_max_age_s:g} + clock_skew_s={self.clock_skew_s:g} = {min_lead:g}; "
                "verifiers could see a token before they see its key"
            )
        if self.retire_grace_s < self.min_retire_grace_s:
            raise ConfigError(
                f"unsafe policy: retire_grace_s={self.retire_grace_s:g} is shorter than "
                f"max_token_ttl_s={self.max_token_ttl_s:g} + jwks_max_age_s="
                f"{self.jwks_max_age_s:g} + clock_skew_s={self.clock_skew_s:g} = "
                f"{self.min_retire_grace_s:g}; live tokens would outlive their key"
            )
        if self.lead_s >= self.rotation_period_s:
            raise ConfigError(
                f"lead_s={self.lead_s:g} must be shorter than rotation_period_s="
                f"{self.rotation_period_s:g}"
            )

    @property
    def min_retire_grace_s(self) -> float:
        """The shortest safe grace: max token TTL + JWKS max-age + clock skew."""
        return self.max_token_ttl_s + self.jwks_max_age_s + self.clock_skew_s

    @property
    def stream_retention_s(self) -> float:
        """How long events stay on the stream: at least the longest grace and lead."""
        return max(self.retire_grace_s, self.lead_s, MIN_STREAM_RETENTION_S)
