"""A verifier's settings, checked once: :func:`check_config` refuses any that cannot work.

The defaults live in :class:`~subscriber.verifier.Verifier`'s signature (documented there);
this module only checks and normalises what it is given, naming the bad value, as pyjwt's
``Lifespan must be greater than 0, the input is "{lifespan}"``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .events import load_announcement_keys
from .redis_conn import parse_redis_url
from .verify import VerifyOptions

StalePolicy = Literal["fail_closed", "keep_verifying"]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be greater than 0, the input is {value!r}")
    return float(value)


def _announcer(
    announcer: str | Sequence[Mapping[str, Any]] | None,
    announcement_keys: Sequence[Mapping[str, Any]] | None,
    snapshot_url: str | None,
) -> tuple[str | None, Sequence[Mapping[str, Any]] | None]:
    """The announcer's URL (if given as one), and the announcement keys to pin (if any)."""
    if isinstance(announcer, str):
        return announcer, announcement_keys
    if announcer is None:
        return None, announcement_keys
    if announcement_keys is not None:
        raise ValueError("pass the announcement keys once: announcer or announcement_keys")
    if snapshot_url is None:
        raise ValueError(
            "announcer given as pinned keys needs snapshot_url (the watcher's signed "
            "snapshot of this issuer)"
        )
    return None, list(announcer)


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """The checked settings of one verifier (the clients it is handed are not settings).

    :param announcer_url: upstream mode with a watcher's base URL.
    :param upstream: upstream mode (an ``announcer`` was given, as a URL or pinned keys).
    :param pinned: pinned announcement JWKs (already loaded once, so known to be usable).
    :param fail_closed: refuse tokens once the keys are stale.
    """

    verify_options: VerifyOptions
    start_timeout_s: float
    fail_closed: bool
    max_staleness_s: float
    unknown_kid_cooldown_s: float
    poll_bounds_s: tuple[float, float]
    presence: bool
    service: str | None
    heartbeat_interval_s: float
    heartbeat_ttl_s: float
    block_ms: int
    leeway_s: float
    freshness_bound_s: float | None
    token_cache_size: int
    announcer_url: str | None
    upstream: bool
    miss_hint_interval_s: float
    pinned: list[Mapping[str, Any]] | None
    snapshot_url: str | None
    stream: str | None


def check_config(
    *,
    issuer: str,
    audience: str | frozenset[str],
    algorithms: frozenset[str],
    typ: str | None,
    redis_url: str | None,
    has_redis: bool,
    snapshot_url: str | None,
    stream: str | None,
    leeway_s: float,
    announcement_keys: Sequence[Mapping[str, Any]] | None,
    stale_policy: StalePolicy,
    max_staleness_s: float,
    unknown_kid_cooldown_s: float,
    min_poll_interval_s: float,
    max_poll_interval_s: float,
    presence: bool,
    service: str | None,
    heartbeat_interval_s: float,
    heartbeat_ttl_s: float,
    block_ms: int,
    token_cache_size: int,
    freshness_bound_s: float | None,
    announcer: str | Sequence[Mapping[str, Any]] | None,
    miss_hint_interval_s: float,
    start_timeout_s: float,
) -> VerifierConfig:
    """Check a verifier's settings, in the order of its signature's documentation.

    :raises ValueError: a setting that cannot work, named with its value.
    """
    if (redis_url is None) == (not has_redis):
        raise ValueError("pass exactly one of redis_url and redis")
    if redis_url:
        parse_redis_url(redis_url, setting="redis_url")
    if isinstance(start_timeout_s, bool) or not start_timeout_s >= 0:
        raise ValueError(f"start_timeout_s must be 0 or more, the input is {start_timeout_s!r}")
    if stale_policy not in ("fail_closed", "keep_verifying"):
        raise ValueError(
            f'stale_policy must be "fail_closed" or "keep_verifying", the input is "{stale_policy}"'
        )
    if not _positive("max_poll_interval_s", max_poll_interval_s) >= min_poll_interval_s:
        raise ValueError(
            f"max_poll_interval_s ({max_poll_interval_s}) is below "
            f"min_poll_interval_s ({min_poll_interval_s})"
        )
    if _positive("heartbeat_ttl_s", heartbeat_ttl_s) <= heartbeat_interval_s:
        raise ValueError(
            f"heartbeat_ttl_s ({heartbeat_ttl_s}) must exceed "
            f"heartbeat_interval_s ({heartbeat_interval_s})"
        )
    announcer_url, announcement_keys = _announcer(announcer, announcement_keys, snapshot_url)
    hint_interval_s = _positive("miss_hint_interval_s", miss_hint_interval_s)
    verify_options = VerifyOptions(
        issuer=issuer, audience=audience, algorithms=algorithms, leeway_s=leeway_s, typ=typ
    )
    pinned = list(announcement_keys) if announcement_keys is not None else None
    if pinned is not None:
        load_announcement_keys(pinned)  # refuse a bad pin now, not at start
    max_staleness_s = _positive("max_staleness_s", max_staleness_s)
    cooldown_s = _positive("unknown_kid_cooldown_s", unknown_kid_cooldown_s)
    poll_bounds_s = (_positive("min_poll_interval_s", min_poll_interval_s), max_poll_interval_s)
    heartbeat_interval_s = _positive("heartbeat_interval_s", heartbeat_interval_s)
    block_ms = int(_positive("block_ms", block_ms))
    if freshness_bound_s is not None:
        freshness_bound_s = _positive("freshness_bound_s", freshness_bound_s)
    if (
        isinstance(token_cache_size, bool)
        or not isinstance(token_cache_size, int)
        or token_cache_size < 0
    ):
        raise ValueError(
            f"token_cache_size must be an integer >= 0, the input is {token_cache_size!r}"
        )
    return VerifierConfig(
        verify_options=verify_options,
        start_timeout_s=float(start_timeout_s),
        fail_closed=stale_policy == "fail_closed",
        max_staleness_s=max_staleness_s,
        unknown_kid_cooldown_s=cooldown_s,
        poll_bounds_s=poll_bounds_s,
        presence=presence,
        service=service,
        heartbeat_interval_s=heartbeat_interval_s,
        heartbeat_ttl_s=heartbeat_ttl_s,
        block_ms=block_ms,
        leeway_s=leeway_s,
        freshness_bound_s=freshness_bound_s,
        token_cache_size=token_cache_size,
        announcer_url=announcer_url,
        upstream=announcer is not None,
        miss_hint_interval_s=hint_interval_s,
        pinned=pinned,
        snapshot_url=snapshot_url,
        stream=stream,
    )
