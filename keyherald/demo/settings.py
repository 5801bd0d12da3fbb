"""Settings of the demo roles, read from the environment (``KEYHERALD_…``).

The issuer and relay read their own settings classes; the demo roles share the connection
settings (``KEYHERALD_REDIS_URL``, ``KEYHERALD_ISSUER``, ``KEYHERALD_ADMIN_TOKEN``) and add a
few of their own, all prefixed ``KEYHERALD_DEMO_``. docker-compose.yml sets them all from
``deploy/keyherald.env``; ``keyherald demo`` sets them for its children.
"""

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from keyherald.errors import ConfigurationError, settings_problems


class DemoSettings(BaseSettings):
    """Environment of ``keyherald demo api|partner|loadgen``."""

    model_config = SettingsConfigDict(env_prefix="KEYHERALD_", extra="ignore")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis of the issuer")
    issuer: str = Field(
        default="http://127.0.0.1:8000", description="issuer URL (iss) and base URL"
    )
    admin_token: str = Field(default="", description="bearer token of the issuer's admin API")
    relay_admin_token: str = Field(
        default="", description="bearer token of the relay's admin API (default: admin_token)"
    )

    demo_audience: str = Field(default="orders-api", description="aud of demo tokens")
    demo_relay_url: str = Field(default="http://127.0.0.1:8090", description="relay base URL")
    demo_partner_url: str = Field(
        default="",
        description="URL the relay delivers to (default http://127.0.0.1:<port>/webhook)",
    )
    demo_api_urls: str = Field(
        default="http://127.0.0.1:8001,http://127.0.0.1:8002",
        description="comma-separated base URLs of the verifying services the loadgen calls",
    )
    demo_requests_per_s: float = Field(default=20.0, description="loadgen request rate", gt=0)
    demo_token_ttl_s: float = Field(default=10.0, description="ttl_s of minted tokens", gt=0)
    demo_heartbeat_s: float = Field(default=1.0, description="verifier heartbeat interval", gt=0)
    demo_announcer: str = Field(
        default="",
        description="upstream mode: the watcher's URL; the APIs verify tokens of the upstream "
        "issuer (KEYHERALD_ISSUER) it announces",
    )
    demo_token_url: str = Field(
        default="",
        description="upstream mode: the loadgen mints at this token endpoint (the stand-in "
        "IdP's) instead of the issuer's admin API",
    )

    @classmethod
    def load(cls) -> "DemoSettings":
        """The settings from the environment.

        :raises ConfigurationError: one line per bad variable, by its environment name.
        """
        try:
            return cls()
        except ValidationError as e:
            secret = frozenset({"admin_token", "relay_admin_token"})
            raise ConfigurationError(*settings_problems(e, "KEYHERALD_", secret=secret)) from e

    @property
    def api_urls(self) -> list[str]:
        """:attr:`demo_api_urls`, split."""
        return [u.strip().rstrip("/") for u in self.demo_api_urls.split(",") if u.strip()]

    @property
    def relay_token(self) -> str:
        """The relay admin token, falling back to the issuer's."""
        return self.relay_admin_token or self.admin_token
