"""The demo's accelerated rotation schedules, scaled down consistently from the defaults.

Production defaults: rotate every 90 d, publish 6 d before activation, keep the old key 7 d,
tokens live ≤ 1 h, JWKS cached 15 min, clock skew 60 s. The demo keeps the same shape in
seconds, and stays inside the issuer's two safety inequalities (lead ≥ max-age + skew; grace ≥
token TTL + max-age + skew), so the issuer accepts it exactly as it would a production policy.

``deploy/keyherald.env`` carries :data:`DEMO` too; a test keeps the two equal.
"""

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    """One rotation schedule, in seconds, plus the demo's own pacing."""

    rotation_period_s: float
    lead_s: float
    retire_grace_s: float
    max_token_ttl_s: float
    jwks_max_age_s: float
    clock_skew_s: float
    #: ``ttl_s`` of the tokens the load generator mints (≤ max_token_ttl_s).
    token_ttl_s: float
    #: Verifier heartbeat interval: how fast the live view sees a verifier's key set change.
    heartbeat_s: float
    #: How often the issuer's scheduler looks for due transitions.
    tick_interval_s: float = 0.25
    algorithm: str = "ES256"

    def __post_init__(self) -> None:
        if self.token_ttl_s > self.max_token_ttl_s:
            raise ValueError(
                f"token_ttl_s={self.token_ttl_s:g} exceeds max_token_ttl_s={self.max_token_ttl_s:g}"
            )

    def policy_env(self) -> dict[str, str]:
        """The issuer's policy settings (``KEYHERALD_…``, see ``issuer/settings.py``)."""
        fields = asdict(self)
        names = (
            "rotation_period_s",
            "lead_s",
            "retire_grace_s",
            "max_token_ttl_s",
            "jwks_max_age_s",
            "clock_skew_s",
            "tick_interval_s",
            "algorithm",
        )
        return {f"KEYHERALD_{name.upper()}": _fmt(fields[name]) for name in names}

    def demo_env(self) -> dict[str, str]:
        """The demo roles' pacing settings (``KEYHERALD_DEMO_…``)."""
        return {
            "KEYHERALD_DEMO_TOKEN_TTL_S": _fmt(self.token_ttl_s),
            "KEYHERALD_DEMO_HEARTBEAT_S": _fmt(self.heartbeat_s),
        }

    def env(self) -> dict[str, str]:
        """Every setting this profile fixes."""
        return self.policy_env() | self.demo_env()


def _fmt(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float | int) else value


#: ``make demo``: a key every 20 s. Same proportions as the defaults where they fit in seconds.
DEMO = Profile(
    rotation_period_s=20.0,
    lead_s=6.0,
    retire_grace_s=12.0,
    max_token_ttl_s=8.0,
    jwks_max_age_s=2.0,
    clock_skew_s=1.0,
    token_ttl_s=8.0,
    heartbeat_s=1.0,
)

#: Tests: a key every 8 s, still inside both safety inequalities.
FAST = Profile(
    rotation_period_s=8.0,
    lead_s=3.0,
    retire_grace_s=7.0,
    max_token_ttl_s=4.0,
    jwks_max_age_s=1.0,
    clock_skew_s=1.0,
    token_ttl_s=4.0,
    heartbeat_s=0.5,
)

PROFILES = {"demo": DEMO, "fast": FAST}
