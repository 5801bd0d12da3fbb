"""``keyherald verify TOKEN``: verify one token against a running issuer and explain the result.

It fetches the issuer's JWKS (and, with an admin token, its key records, to tell a revoked key
from one it never had), runs the subscriber library's checks in the order a verifier does, and
prints what it found at each step: the header, the ``kid`` and its key's state, the claims and
their times, and the reason a token is refused. Exit code 0: valid; 1: refused, or the issuer
could not be reached; 2: no issuer configured.

The issuer is always the configured one (``--issuer`` or ``KEYHERALD_ISSUER``), never the
token's own ``iss``: a crafted token would otherwise choose the key server that vouches for it,
and receive the admin token.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from subscriber.errors import InvalidKey, InvalidToken, MalformedToken
from subscriber.jwk import PublicKey, load_public_jwk
from subscriber.jws import b64url_decode, strict_json_object
from subscriber.verify import VerifyOptions, check_claims, verify_signature

from .errors import CommandError, ConfigurationError
from .observe import IssuerClient, IssuerUnavailable
from .text import printable

HELP = "verify one token against a running issuer and explain the result"

#: Why a token is refused, in words, per machine-readable reason.
EXPLANATIONS = {
    "malformed": "the token is not a well-formed compact JWS",
    "token_too_large": "the token is larger than the verifier accepts",
    "forbidden_header": "the header carries a parameter that would let the token choose its key",
    "missing_kid": "the header names no key (kid)",
    "unknown_kid": "no key with this kid is published by the issuer",
    "revoked_key": "the key was revoked: tokens it signed are refused",
    "retired_key": "the key was retired after its grace period",
    "bad_signature": "the signature does not verify with the published key",
    "alg_mismatch": "the header's alg is not the algorithm of the key",
    "alg_not_allowed": "the algorithm is not allowed",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet (nbf)",
    "issued_in_future": "the token was issued in the future (iat)",
    "wrong_issuer": "iss is not this issuer",
    "wrong_audience": "aud holds none of the accepted audiences",
    "missing_claim": "a required claim is missing",
    "invalid_claim": "a claim has the wrong type",
}


@dataclass
class Report:
    """What ``keyherald verify`` found, step by step."""

    issuer: str
    header: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None
    kid: str | None = None
    key_state: str | None = None
    key_alg: str | None = None
    key_set_version: int | None = None
    valid: bool = False
    reason: str | None = None
    detail: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-able dictionary."""
        return {k: v for k, v in self.__dict__.items()}


def _segment(token: str, index: int) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return strict_json_object(b64url_decode(parts[index]))
    except MalformedToken:
        return None


def _keys(jwks: dict[str, Any]) -> dict[str, PublicKey]:
    keys: dict[str, PublicKey] = {}
    for jwk in jwks.get("keys") or []:
        try:
            key = load_public_jwk(jwk)
        except InvalidKey:
            continue
        keys[key.kid] = key
    return keys


async def explain(
    token: str, client: IssuerClient, *, audience: str | None, now: float | None = None
) -> Report:
    """Verify ``token`` against the issuer behind ``client`` and say why it passes or fails.

    :raises IssuerUnavailable: the JWKS could not be fetched.
    """
    now = time.time() if now is None else now
    report = Report(issuer=client.issuer)
    report.header = _segment(token, 0)
    report.claims = _segment(token, 1)
    kid = report.header.get("kid") if report.header else None
    report.kid = kid if isinstance(kid, str) else None

    jwks = await client.jwks()
    member = jwks.get("keyherald") or {}
    states: dict[str, str] = dict(member.get("states") or {})
    report.key_set_version = member.get("version")
    keys = _keys(jwks)
    gone: dict[str, str] = {}
    if report.kid is not None:
        report.key_state = states.get(report.kid)
        if report.kid in keys:
            report.key_alg = keys[report.kid].alg
            report.key_state = report.key_state or "published"
        else:
            report.key_state = report.key_state or await _admin_state(client, report.kid, report)
            if report.key_state in ("revoked", "retired"):
                gone[report.kid] = f"{report.key_state}_key"

    aud = audience or _token_audience(report.claims)
    if audience is None:
        report.notes.append("no --audience given: the token's own aud was accepted")
    try:
        options = VerifyOptions(issuer=client.issuer, audience=aud or "-")
        _, payload = verify_signature(token, keys, options, gone)
        claims = strict_json_object(payload)
        check_claims(claims, options, now)
    except InvalidToken as e:
        report.reason = e.reason
        report.detail = str(e)
        return report
    report.claims = claims
    report.valid = True
    return report


async def _admin_state(client: IssuerClient, kid: str, report: Report) -> str | None:
    try:
        records = await client.keys()
    except IssuerUnavailable:
        report.notes.append("key not in the JWKS; the admin API could not say more")
        return None
    for record in records:
        if record.get("kid") == kid:
            state = record.get("state")
            return state if isinstance(state, str) else None
    return "unknown"


def _token_audience(claims: dict[str, Any] | None) -> str | None:
    aud = claims.get("aud") if claims else None
    if isinstance(aud, str):
        return aud
    if isinstance(aud, list) and aud and isinstance(aud[0], str):
        return aud[0]
    return None


def _when(value: Any, now: float) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return repr(value)
    delta = value - now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    return f"{stamp} ({'in ' if delta >= 0 else ''}{abs(delta):.0f}s{'' if delta >= 0 else ' ago'})"


def render(report: Report, out: TextIO, now: float | None = None) -> None:
    """Print ``report`` for a person."""
    now = time.time() if now is None else now

    def line(label: str, value: str) -> None:
        # Every value here may come from the token: no control character reaches the terminal.
        out.write(f"{printable(label):<11} {printable(value)}\n")

    line("issuer", f"{report.issuer} (key-set version {report.key_set_version})")
    line("header", json.dumps(report.header) if report.header else "unreadable")
    if report.kid is not None:
        alg = f", {report.key_alg}" if report.key_alg else ""
        line("kid", report.kid)
        line("key", f"{report.key_state or 'unknown'}{alg}")
    for name, value in (report.claims or {}).items():
        shown = _when(value, now) if name in ("exp", "nbf", "iat") else json.dumps(value)
        line(f"claim {name}", shown)
    for note in report.notes:
        line("note", note)
    if report.valid:
        line("result", "VALID")
    else:
        why = EXPLANATIONS.get(report.reason or "", report.detail or "")
        line("result", f"INVALID: {report.reason}: {why}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", help="the compact JWS; '-' reads it from stdin")
    parser.add_argument(
        "--issuer",
        default=os.environ.get("KEYHERALD_ISSUER"),
        help="issuer URL (default $KEYHERALD_ISSUER; never the token's own iss)",
    )
    parser.add_argument("--audience", default=None, help="the audience the token must carry")
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("KEYHERALD_ADMIN_TOKEN", ""),
        help="issuer admin token, to name the state of a key gone from the JWKS "
        "(default $KEYHERALD_ADMIN_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    # One line per HTTP request would bury the answer.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    token = sys.stdin.read().strip() if args.token == "-" else args.token.strip()
    issuer = args.issuer
    if not issuer:
        raise ConfigurationError(
            "no issuer to verify against: set KEYHERALD_ISSUER or pass --issuer (the token's "
            "own iss is not trusted: it would choose the keys that vouch for it)"
        )
    try:
        report = asyncio.run(_explain(token, issuer, args.admin_token, args.audience))
    except IssuerUnavailable as e:
        raise CommandError(
            f"issuer unavailable ({e}): start it, or set KEYHERALD_ISSUER (or --issuer)"
        ) from e
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render(report, sys.stdout)
    return 0 if report.valid else 1


async def _explain(token: str, issuer: str, admin_token: str, audience: str | None) -> Report:
    async with IssuerClient(issuer, admin_token=admin_token) as client:
        return await explain(token, client, audience=audience)
