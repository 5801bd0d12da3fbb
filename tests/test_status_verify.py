"""``keyherald status`` and ``keyherald verify`` against a real issuer process and Redis."""

import base64
import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyherald.demo.procs import Supervisor, http_ready
from keyherald.observe import IssuerClient
from keyherald.redis_server import free_port
from keyherald.verify_cmd import explain, render
from subscriber.jws import b64url_encode, compact_json
from subscriber.redis_keys import verifier_index, verifier_states

ADMIN = "test-admin-token"


@pytest.fixture
def issuer(redis, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A ``keyherald issuer`` process with a short demo policy; yields its environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
    env |= {
        "KEYHERALD_ISSUER": f"http://127.0.0.1:{port}",
        "KEYHERALD_REDIS_URL": redis_url,
        "KEYHERALD_ADMIN_TOKEN": ADMIN,
        "KEYHERALD_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "KEYHERALD_ROTATION_PERIOD_S": "600",
        "KEYHERALD_LEAD_S": "60",
        "KEYHERALD_RETIRE_GRACE_S": "120",
        "KEYHERALD_MAX_TOKEN_TTL_S": "60",
        "KEYHERALD_JWKS_MAX_AGE_S": "5",
        "KEYHERALD_CLOCK_SKEW_S": "1",
    }
    with Supervisor(tmp_path) as sup:
        url = env["KEYHERALD_ISSUER"]
        sup.start(
            "issuer",
            ["keyherald", "issuer", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            ready=http_ready(url + "/.well-known/jwks.json"),
        )
        sup.wait_ready(30)
        yield env


def mint(env: dict[str, str], aud: str = "orders-api") -> dict[str, str]:
    response = httpx.post(
        env["KEYHERALD_ISSUER"] + "/admin/tokens",
        json={"sub": "alice", "aud": aud, "ttl_s": 60},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    response.raise_for_status()
    body: dict[str, str] = response.json()
    return body


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyherald.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_verify_explains_a_valid_token(issuer) -> None:
    token = mint(issuer)
    result = cli(issuer, "verify", token["token"], "--audience", "orders-api")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result      VALID" in result.stdout
    assert token["kid"] in result.stdout
    assert "key         active, ES256" in result.stdout
    assert 'claim sub   "alice"' in result.stdout


def test_verify_names_the_reason(issuer) -> None:
    token = mint(issuer)["token"]
    result = cli(issuer, "verify", token, "--audience", "billing")
    assert result.returncode == 1
    assert "INVALID: wrong_audience" in result.stdout

    head, payload, sig = token.split(".")
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    result = cli(issuer, "verify", f"{head}.{payload}.{flipped}", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["reason"] == "bad_signature"


def test_verify_tells_unknown_from_revoked(issuer) -> None:
    foreign = ec.generate_private_key(ec.SECP256R1())
    header = b64url_encode(compact_json({"alg": "ES256", "kid": "not-ours", "typ": "JWT"}))
    body = b64url_encode(compact_json({"iss": issuer["KEYHERALD_ISSUER"], "exp": 2**40}))
    del foreign  # the signature never gets checked: the kid is unknown first
    result = cli(issuer, "verify", f"{header}.{body}.AAAA", "--json")
    assert json.loads(result.stdout)["reason"] == "unknown_kid"
    assert json.loads(result.stdout)["key_state"] == "unknown"

    token = mint(issuer)
    revoke = httpx.post(
        f"{issuer['KEYHERALD_ISSUER']}/admin/keys/{token['kid']}/revoke",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    revoke.raise_for_status()
    result = cli(issuer, "verify", token["token"])
    assert result.returncode == 1
    assert "key         revoked" in result.stdout
    assert "INVALID: revoked_key" in result.stdout


async def test_explain_reports_expiry_with_the_times(issuer) -> None:
    token = mint(issuer)
    async with IssuerClient(issuer["KEYHERALD_ISSUER"]) as client:
        exp = float(token["exp"])
        report = await explain(token["token"], client, audience="orders-api", now=exp + 120)
    assert not report.valid and report.reason == "expired"
    out = io.StringIO()
    render(report, out, now=exp + 120)
    assert "claim exp" in out.getvalue() and "ago" in out.getvalue()


async def test_status_shows_keys_plan_and_who_holds_them(issuer, redis) -> None:
    token = mint(issuer)
    name = issuer["KEYHERALD_ISSUER"]
    now = time.time()
    record = {
        "instance_id": "host:1:abc",
        "service": "orders-api",
        "state": "live",
        "version": 2,
        "kids": {token["kid"]: now},
        "lag_ms": 1.5,
        "updated_at": now,
    }
    await redis.zadd(verifier_index(name), {"host:1:abc": int((now + 60) * 1000)})
    await redis.hset(verifier_states(name), "host:1:abc", json.dumps(record))

    result = cli(issuer, "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert token["kid"] in out and "active" in out
    assert "plan" in out and "activate" in out
    assert "verifiers (1 live)" in out and "orders-api" in out
    assert f"{token['kid']}  active  1/1      orders-api" in out

    as_json = json.loads(cli(issuer, "status", "--json").stdout)
    assert as_json["verifiers"][0]["kids"] == [token["kid"]]

    anonymous = {k: v for k, v in issuer.items() if k != "KEYHERALD_ADMIN_TOKEN"}
    result = cli(anonymous, "status")
    assert result.returncode == 0 and "plan: needs --admin-token" in result.stdout
