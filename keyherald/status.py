"""``keyherald status``: the issuer's keys, its plan, and which verifiers hold which key.

Keys and plan come from the issuer's admin API (without an admin token, from its public JWKS,
which shows the published keys only); verifiers come from their heartbeat records in Redis.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import redis.asyncio as aioredis

from subscriber.redis_conn import RedisConfigError, connect

from .errors import CommandError, ConfigurationError
from .observe import AdminRefused, Heartbeat, IssuerClient, IssuerUnavailable, read_heartbeats
from .text import printable

HELP = "show the issuer's keys, the plan, and which verifiers hold which key"


async def collect(client: IssuerClient, redis: aioredis.Redis | None) -> dict[str, Any]:
    """Everything ``keyherald status`` shows, as one JSON-able dictionary.

    :raises IssuerUnavailable: the issuer did not answer at all.
    """
    jwks = await client.jwks()
    member = jwks.get("keyherald") or {}
    status: dict[str, Any] = {
        "issuer": client.issuer,
        "version": member.get("version"),
        "epoch": member.get("epoch"),
        "keys": None,
        "plan": None,
        "plan_unavailable": None,
        "verifiers": None,
    }
    try:
        status["keys"] = await client.keys()
        status["plan"] = await client.plan()
    except IssuerUnavailable as e:
        status["plan_unavailable"] = (
            str(e) if isinstance(e, AdminRefused) else "admin API: " + str(e)
        )
        states = member.get("states") or {}
        status["keys"] = [
            {"kid": jwk.get("kid"), "alg": jwk.get("alg"), "state": states.get(jwk.get("kid"))}
            for jwk in jwks.get("keys") or []
        ]
    if redis is not None:
        beats = await read_heartbeats(redis, client.issuer)
        status["verifiers"] = [_beat(b) for b in beats]
    return status


def _beat(beat: Heartbeat) -> dict[str, Any]:
    return {
        "instance_id": beat.instance_id,
        "service": beat.service,
        "state": beat.state,
        "version": beat.version,
        "kids": sorted(beat.kids),
        "lag_ms": beat.lag_ms,
        "updated_at": beat.updated_at,
    }


def _at(value: Any, now: float) -> str:
    if not isinstance(value, int | float):
        return "-"
    delta = value - now
    return f"{'+' if delta >= 0 else '-'}{_duration(abs(delta))}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _table(out: TextIO, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    # Heartbeats and key records come from Redis, which anyone with write access can forge:
    # no control character of theirs reaches the terminal.
    rows = [tuple(printable(str(c)) for c in row) for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        out.write("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
        out.write("\n")


def render(status: dict[str, Any], out: TextIO, now: float | None = None) -> None:
    """Print ``status`` for a person (times relative to ``now``)."""
    now = time.time() if now is None else now
    out.write(f"issuer {printable(str(status['issuer']))}")
    out.write(f"  key-set version {printable(str(status['version']))}")
    out.write(f"  epoch {printable(str(status['epoch']))}\n\nkeys\n")
    keys = status["keys"] or []
    _table(
        out,
        ("KID", "STATE", "ALG", "PUBLISHED", "ACTIVE FROM", "UNTIL"),
        [
            (
                str(k.get("kid")),
                str(k.get("state")),
                str(k.get("alg")),
                _at(k.get("created_at"), now),
                _at(k.get("activated_at") or k.get("activate_at"), now),
                _at(k.get("ended_at") or k.get("retire_at") or k.get("deactivated_at"), now),
            )
            for k in keys
        ],
    )
    if status["plan"] is not None:
        out.write("\nplan\n")
        _table(
            out,
            ("WHEN", "ACTION", "KID"),
            [(_at(t.get("at"), now), str(t.get("action")), str(t.get("kid") or "(new key)"))
             for t in status["plan"]],
        )  # fmt: skip
    else:
        out.write(f"\nplan: {printable(status.get('plan_unavailable') or 'unavailable')}\n")
    verifiers = status["verifiers"]
    if verifiers is None:
        out.write("\nverifiers: needs --redis-url\n")
        return
    out.write(f"\nverifiers ({len(verifiers)} live)\n")
    _table(
        out,
        ("SERVICE", "INSTANCE", "STATE", "VERSION", "LAG", "KEYS HELD"),
        [
            (
                str(v["service"]),
                str(v["instance_id"]),
                str(v["state"]),
                str(v["version"]),
                f"{v['lag_ms']:.0f}ms" if isinstance(v["lag_ms"], int | float) else "-",
                " ".join(k[:12] for k in v["kids"]),
            )
            for v in verifiers
        ],
    )
    out.write("\nwho holds which key\n")
    rows = []
    for key in keys:
        kid = str(key.get("kid"))
        holders = [v["service"] for v in verifiers if kid in v["kids"]]
        rows.append(
            (kid, str(key.get("state")), f"{len(holders)}/{len(verifiers)}", " ".join(holders))
        )
    _table(out, ("KID", "STATE", "HELD BY", "SERVICES"), rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--issuer",
        default=os.environ.get("KEYHERALD_ISSUER", "http://127.0.0.1:8000"),
        help="issuer URL (default $KEYHERALD_ISSUER, else http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("KEYHERALD_REDIS_URL"),
        help="Redis holding the heartbeats (default $KEYHERALD_REDIS_URL)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("KEYHERALD_ADMIN_TOKEN", ""),
        help="issuer admin token, for key records and the plan (default $KEYHERALD_ADMIN_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    # One line per HTTP request would bury the answer.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        status = asyncio.run(_collect(args.issuer, args.admin_token, args.redis_url))
    except IssuerUnavailable as e:
        raise CommandError(
            f"issuer unavailable ({e}): start it, or set KEYHERALD_ISSUER (or --issuer)"
        ) from e
    except RedisConfigError as e:
        raise ConfigurationError(str(e)) from e
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        render(status, sys.stdout)
    return 0


async def _collect(issuer: str, admin_token: str, redis_url: str | None) -> dict[str, Any]:
    clients = connect(redis_url, setting="--redis-url") if redis_url else None
    try:
        async with IssuerClient(issuer, admin_token=admin_token) as client:
            return await collect(client, clients.primary if clients else None)
    finally:
        if clients is not None:
            await clients.aclose()
