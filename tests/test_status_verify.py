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
    assert result.returncode == 0
    assert "plan: the admin API needs an admin token: set KEYHERALD_ADMIN_TOKEN" in result.stdout

    refused = cli({**issuer, "KEYHERALD_ADMIN_TOKEN": "not-the-token"}, "status")
    assert refused.returncode == 0
    assert "plan: the admin API refused the admin token (401)" in refused.stdout


async def test_status_prints_no_escape_sequence_from_a_forged_heartbeat(issuer, redis) -> None:
    name = issuer["KEYHERALD_ISSUER"]
    now = time.time()
    evil = "\x1b]0;pwned\x07\x1b[2J\u202eorders"
    record = {"instance_id": evil, "service": evil, "state": evil, "version": 1,
              "kids": {evil: now}, "lag_ms": 1.0, "updated_at": now}  # fmt: skip
    await redis.zadd(verifier_index(name), {"evil": int((now + 60) * 1000)})
    await redis.hset(verifier_states(name), "evil", json.dumps(record))
    result = cli(issuer, "status")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b]0;pwned" in result.stdout  # shown, escaped


def test_status_into_a_closed_pipe_ends_quietly(issuer) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "keyherald.cli", "status"],
            env=issuer, stdout=write, stderr=subprocess.PIPE, text=True, timeout=30,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == ""


def test_status_with_an_unreachable_redis_is_one_line(issuer) -> None:
    env = {**issuer, "KEYHERALD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = cli(env, "status")
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("keyherald status: cannot reach Redis") and "KEYHERALD_REDIS_URL" in line


def test_verify_never_trusts_the_tokens_iss_nor_sends_it_the_admin_token(issuer) -> None:
    import socket

    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.settimeout(0.5)
        header = b64url_encode(compact_json({"alg": "ES256", "kid": "k"}))
        iss = f"http://127.0.0.1:{trap.getsockname()[1]}"
        body = b64url_encode(compact_json({"iss": iss, "sub": "x"}))
        env = {k: v for k, v in issuer.items() if k != "KEYHERALD_ISSUER"}
        result = cli(env, "verify", f"{header}.{body}.AAAA")
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()
        assert "set KEYHERALD_ISSUER or pass --issuer" in line
        with pytest.raises(TimeoutError):
            trap.accept()  # nothing called the URL the token named


def test_verify_prints_no_escape_sequence_from_the_token(issuer) -> None:
    header = b64url_encode(compact_json({"alg": "ES256", "kid": "\x1b[2Jk"}))
    body = b64url_encode(compact_json({"sub": "x"}))
    result = cli(issuer, "verify", f"{header}.{body}.AAAA")
    assert result.returncode == 1
    assert "\x1b" not in result.stdout and "\\x1b[2Jk" in result.stdout
