"""``keyherald relay``: consume the issuer's stream and deliver to partners, with the admin API.

Settings come from the environment (``KEYHERALD_RELAY_…``, see ``keyherald relay --help``).
Several replicas may run at once against one Redis, each with its own consumer name.
"""

import argparse
import asyncio
import contextlib
import logging
import textwrap
import time
from collections.abc import Mapping
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from issuer.cli import show_default
from issuer.errors import ConfigError as IssuerConfigError
from issuer.kek import Kek
from keyherald.errors import CommandError, ConfigurationError, settings_problems
from keyherald.redis_check import check_redis
from subscriber.constants import http_timeout_s
from subscriber.errors import FetchError, InvalidKey
from subscriber.events import load_announcement_keys
from subscriber.jwks_client import JwksClient
from subscriber.redis_conn import connect

from . import constants
from .api import create_app
from .consumer import KeyRefresher
from .egress import EgressPolicy
from .errors import ConfigError
from .keysource import KeySource, SnapshotKeySource
from .policy import DeliveryPolicy
from .schedule import RetrySchedule
from .service import Relay
from .settings import RelaySettings

logger = logging.getLogger(__name__)

_SETTING = "KEYHERALD_RELAY_REDIS_URL"

HELP = "deliver key-rotation events to partner webhooks: signed, ordered, retried, never lost"


def settings_help() -> str:
    """One line per setting: environment variable, default and meaning."""
    lines = ["settings (environment variables; durations in seconds):"]
    for name, field in RelaySettings.model_fields.items():
        if field.is_required():
            default = "required"
        elif name == "consumer":
            default = "default <host>-<pid>"
        elif field.default_factory is not None:
            default = f"default {show_default(name, field.default_factory())}"  # type: ignore[call-arg]
        else:
            default = f"default {show_default(name, field.default)}"
        lines.append(f"  KEYHERALD_RELAY_{name.upper()}")
        lines.append(textwrap.indent(f"{field.description or name} ({default})", "      "))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = settings_help()
    parser.add_argument("--host", default=None, help="admin API bind address (default: setting)")
    parser.add_argument("--port", type=int, default=None, help="admin API port (default: setting)")


def build_relay(
    settings: RelaySettings,
    redis: aioredis.Redis,
    keys: KeySource,
    announce: dict[str, object],
    refresh_announce_keys: KeyRefresher | None = None,
) -> Relay:
    """A :class:`Relay` configured from ``settings``.

    :raises ConfigError: a setting that cannot work.
    """
    schedule = RetrySchedule(
        settings.retry_schedule_s,
        jitter=settings.retry_jitter,
        max_retry_after_s=settings.max_retry_after_s,
    )
    policy = DeliveryPolicy(
        schedule,
        deadline_s=settings.delivery_timeout_s,
        lease_s=settings.partner_lease_s,
        max_response_bytes=settings.response_max_bytes,
        failure_disable_s=settings.failure_disable_s,
        poll_interval_s=settings.poll_interval_s,
        collapse=settings.collapse,
    )
    try:
        egress_policy = EgressPolicy.from_strings(settings.egress_allow)
    except ValueError as e:
        raise ConfigError(str(e), reason="bad_allow_list") from e
    kek = None
    if settings.kek is None:
        logger.warning(
            "KEYHERALD_RELAY_KEK is not set: partner secrets are stored in Redis in clear"
        )
    else:
        try:
            kek = Kek.from_base64(settings.kek.get_secret_value(), "KEYHERALD_RELAY_KEK")
        except IssuerConfigError as e:
            raise ConfigError(str(e), reason="bad_kek") from e
    return Relay(
        redis,
        settings.issuer,
        announce,  # type: ignore[arg-type]
        keys,
        policy=policy,
        egress_policy=egress_policy,
        consumer=settings.consumer,
        group=settings.group,
        secret_overlap_s=settings.secret_overlap_s,
        block_ms=settings.block_ms,
        idle_before_claim_s=settings.idle_before_claim_s,
        max_attempts=settings.max_attempts,
        refresh_announce_keys=refresh_announce_keys,
        kek=kek,
    )


async def _announcement_jwks(
    settings: RelaySettings, client: JwksClient
) -> list[Mapping[str, Any]]:
    if settings.announcement_keys:
        return [dict(k) for k in settings.announcement_keys]
    deadline = time.monotonic() + constants.metadata_wait_s
    while True:
        try:
            return (await client.fetch_metadata()).announcement_keys
        except FetchError as e:
            if time.monotonic() > deadline:
                raise
            logger.info("waiting for the issuer metadata: %s", e)
            await asyncio.sleep(1.0)


async def _serve_until_either_stops(server: uvicorn.Server, relay: Relay) -> None:
    # uvicorn stops on SIGINT/SIGTERM; a relay loop stops only on a bug. Either ends the
    # process, so a dead consumer never hides behind a live admin API.
    api = asyncio.create_task(server.serve(), name="relay-admin-api")
    work = asyncio.create_task(relay.wait(), name="relay-wait")
    await asyncio.wait({api, work}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    work.cancel()
    await api
    with contextlib.suppress(asyncio.CancelledError):
        await work  # re-raises what stopped the relay


async def serve(settings: RelaySettings, host: str, port: int) -> None:
    """Run one replica and its admin API until cancelled (Ctrl-C).

    :raises CommandError: Redis does not answer; :class:`ConfigurationError` if its URL or
        TLS with it cannot work.
    """
    # Before waiting for the issuer: a Redis that is down or a TLS option that cannot work is
    # one line, not a traceback from the consumer's first read.
    await check_redis(settings.redis_url, setting=_SETTING)  # refuses a URL that cannot work
    clients = connect(settings.redis_url, setting=_SETTING)
    # XREADGROUP writes (the group's state): the relay reads the stream on the primary.
    redis = clients.primary
    try:
        async with httpx.AsyncClient(timeout=http_timeout_s) as issuer_http:
            jwks = JwksClient(issuer_http, settings.issuer, snapshot_url=settings.snapshot())
            announce = load_announcement_keys(await _announcement_jwks(settings, jwks))
            if not announce:
                raise ConfigError("the issuer publishes no announcement keys")

            async def refresh() -> Mapping[str, Ed25519PublicKey]:
                return load_announcement_keys((await jwks.fetch_metadata()).announcement_keys)

            # Pinned keys are the operator's decision; only metadata-sourced ones are refetched.
            refresher = None if settings.announcement_keys else refresh
            trusted = dict(announce)  # one mapping: the consumer adds to it, snapshots read it
            source = SnapshotKeySource(jwks, settings.issuer, trusted)
            relay = build_relay(settings, redis, source, trusted, refresher)  # type: ignore[arg-type]
            app = create_app(relay, settings.admin_token.get_secret_value())
            config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
            async with relay:
                logger.info("relay for %s: admin API on http://%s:%s", settings.issuer, host, port)
                await _serve_until_either_stops(uvicorn.Server(config), relay)
    finally:
        await clients.aclose()


def run(args: argparse.Namespace) -> int:
    try:
        settings = RelaySettings()  # type: ignore[call-arg]  # issuer comes from the env
    except ValidationError as e:
        # Every bad or missing variable at once, by its environment name, never its value
        # when it is a secret.
        raise ConfigurationError(
            *settings_problems(e, "KEYHERALD_RELAY_", secret=frozenset({"admin_token", "kek"}))
        ) from e
    host = args.host or settings.host
    port = args.port or settings.port
    try:
        asyncio.run(serve(settings, host, port))
    except ConfigError as e:
        raise ConfigurationError(str(e)) from e
    except CommandError:
        raise
    except (FetchError, InvalidKey) as e:
        raise CommandError(
            f"cannot start: {e}; check that the issuer at KEYHERALD_RELAY_ISSUER is up"
        ) from e
    except KeyboardInterrupt:
        pass
    except Exception:
        # A crash of a running service (not bad input): its log keeps the traceback.
        logger.exception("the relay stopped")
        return 1
    return 0
