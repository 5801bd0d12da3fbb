"""``keyherald watch`` configuration from the environment (prefix ``KEYHERALD_WATCH_``), read at
the entry points only. In tests, build one directly: ``WatchSettings(upstreams=..., kek=...)``.
"""

from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from issuer.errors import ConfigError
from issuer.kek import Kek

from . import constants


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream to watch: its ``iss``, and an explicit JWKS URL (else: discovery)."""

    issuer: str
    jwks_url: str | None = None


class WatchSettings(BaseSettings):
    """Settings of ``keyherald watch``; each field is ``KEYHERALD_WATCH_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="KEYHERALD_WATCH_", extra="ignore")

    upstreams: str = Field(
        description="upstream issuers, comma-separated; each `<issuer>` (its OIDC discovery "
        "names the JWKS) or `<issuer> <jwks url>`, e.g. `https://tenant.eu.auth0.com/`"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis deployment the verifiers follow: redis://, rediss://, unix://, "
        "redis+sentinel://, redis+cluster:// (see the README's Redis table)",
    )
    kek: SecretStr | None = Field(
        None, description="key-encryption key (base64 of 32 random bytes) sealing the watcher's "
        "announcement key and authenticating its store; required",
    )  # fmt: skip
    dev_ephemeral_kek: bool = Field(
        False, description="development only: without a KEK, generate a throwaway one"
    )
    poll_floor_s: float = Field(
        constants.poll_floor_s, gt=0, description="never poll an upstream more often than this"
    )
    poll_ceiling_s: float = Field(
        constants.poll_ceiling_s, gt=0, description="longest of our own poll intervals"
    )
    default_interval_s: float = Field(
        constants.default_interval_s, gt=0, description="poll interval when there is no max-age"
    )
    retire_hold_s: float = Field(
        constants.retire_hold_s,
        ge=0,
        description="a kid absent upstream this long is retired (providers' edges flap)",
    )
    cooldown_s: float = Field(
        constants.poll_floor_s,
        gt=0,
        description="at most one early fetch per upstream per this long, for unknown-kid hints "
        "from the whole fleet",
    )
    freshness_interval_s: float = Field(
        30.0, gt=0, description="interval of the signed freshness records verifiers expect"
    )
    lease_ttl_s: float = Field(
        10.0, gt=0, description="leader lease; a dead leader is replaced after it"
    )
    tick_interval_s: float = Field(
        1.0, gt=0, description="longest wait between the leader's rounds"
    )
    redis_timeout_s: float = Field(5.0, gt=0, description="socket timeout of the Redis client")
    state_dir: str | None = Field(
        None, description="directory for the high-water mark files (refuse rolled-back stores)"
    )
    allow_http: bool = Field(
        False, description="accept `http://` upstreams (tests and the demo; never production)"
    )

    def upstream_list(self) -> list[Upstream]:
        """The upstreams, checked.

        :raises ConfigError: none given, a malformed item, a duplicate, or plain HTTP without
            ``allow_http``.
        """
        found: list[Upstream] = []
        for item in self.upstreams.split(","):
            parts = item.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise ConfigError(
                    f"KEYHERALD_WATCH_UPSTREAMS item {item.strip()!r}: expected "
                    "`<issuer>` or `<issuer> <jwks url>`"
                )
            for url in parts:
                self._check_url(url)
            found.append(Upstream(parts[0], parts[1] if len(parts) == 2 else None))
        if not found:
            raise ConfigError("KEYHERALD_WATCH_UPSTREAMS names no upstream issuer")
        issuers = [u.issuer for u in found]
        if len(set(issuers)) != len(issuers):
            raise ConfigError("KEYHERALD_WATCH_UPSTREAMS names an issuer twice")
        return found

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"KEYHERALD_WATCH_UPSTREAMS: {url!r} is not an absolute http(s) URL")
        if parts.scheme == "http" and not self.allow_http:
            raise ConfigError(
                f"KEYHERALD_WATCH_UPSTREAMS: {url!r} is plain http; providers' keys must come "
                "over https (set KEYHERALD_WATCH_ALLOW_HTTP=1 only for a local test IdP)"
            )

    def load_kek(self) -> Kek:
        """The KEK, or an ephemeral one (with a loud warning) if ``dev_ephemeral_kek``.

        :raises ConfigError: no KEK and no development flag, or a malformed KEK.
        """
        if self.kek is not None:
            return Kek.from_base64(self.kek.get_secret_value(), name="KEYHERALD_WATCH_KEK")
        if self.dev_ephemeral_kek:
            return Kek.ephemeral()
        raise ConfigError(
            "KEYHERALD_WATCH_KEK is not set: the watcher seals its announcement key under it. "
            "Set it to base64 of 32 random bytes (e.g. `openssl rand -base64 32`), or set "
            "KEYHERALD_WATCH_DEV_EPHEMERAL_KEK=1 for a throwaway development key."
        )
