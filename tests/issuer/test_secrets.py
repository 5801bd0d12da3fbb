"""Private key bytes never reach Redis in clear, nor a log line, nor an HTTP response."""

import base64
import json
import logging

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import FastAPI

from issuer.app import create_app
from issuer.authority import ANNOUNCE_PURPOSE, SIGNING_PURPOSE, Authority
from issuer.kek import Kek
from subscriber.jws import b64url_encode
from tests.issuer.conftest import ADMIN_TOKEN, ISSUER, KEK_BYTES, make_settings


def _encodings(secret: bytes) -> set[bytes]:
    """Every spelling of ``secret`` a leak could take."""
    return {
        secret, secret.hex().encode(), base64.b64encode(secret), b64url_encode(secret).encode(),
    }  # fmt: skip


def _int(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _secrets_of(der: bytes) -> set[bytes]:
    key = serialization.load_der_private_key(der, None)
    parts = [der]
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        parts += [_int(n.d), _int(n.p), _int(n.q), _int(n.dmp1), _int(n.dmq1), _int(n.iqmp)]
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        parts.append(key.private_numbers().private_value.to_bytes(32, "big"))
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        parts.append(
            key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())
        )  # fmt: skip
    return {e for p in parts for e in _encodings(p)}


async def _dump(redis: aioredis.Redis) -> bytes:
    """Every byte stored in the database."""
    blob = bytearray()
    async for key in redis.scan_iter():
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                blob += field + b"\n" + value + b"\n"
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                blob += b"\n".join(k + b"=" + v for k, v in fields.items())
        elif kind == "string":
            blob += await redis.get(key) or b""
    return bytes(blob)


async def _secrets(authority: Authority, kek: Kek) -> set[bytes]:
    snap = await authority.store.load()
    found = {e for e in _encodings(KEK_BYTES)}
    for record in snap.keys.values():
        found |= _secrets_of(kek.open(record.sealed, kid=record.kid, purpose=SIGNING_PURPOSE))
    sealed = json.loads(snap.meta["announce_sealed"])
    raw = kek.open(sealed, kid=snap.meta["announce_kid"], purpose=ANNOUNCE_PURPOSE)
    found |= _encodings(raw)
    return found


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_private_bytes_never_in_clear(
    alg: str, redis: aioredis.Redis, clock, kek: Kek, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app: FastAPI = create_app(settings=make_settings(algorithm=alg), redis=redis, clock=clock,
                              run_scheduler=False)  # fmt: skip
    authority: Authority = app.state.authority
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    responses = bytearray()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http:
        for method, path in [
            ("GET", "/.well-known/jwks.json"), ("GET", "/.well-known/openid-configuration"),
            ("POST", "/admin/rotate"), ("GET", "/admin/keys"), ("GET", "/admin/plan"),
        ]:  # fmt: skip
            responses += (await http.request(method, path, headers=headers)).content
        clock.advance(6 * 86_400)
        await authority.tick()
        token = await http.post("/admin/tokens", headers=headers,
                                json={"sub": "s", "aud": "a", "ttl_s": 60})  # fmt: skip
        responses += token.content
        active = next(k.kid for k in await authority.keys() if k.state == "active")
        responses += (await http.post(f"/admin/keys/{active}/revoke", headers=headers)).content

    secrets = await _secrets(authority, kek)
    assert len(await authority.keys()) == 3
    stored = await _dump(redis)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records).encode()
    assert b"initialised an empty key store" in logged  # the log capture did see the issuer
    for secret in secrets:
        assert secret not in stored
        assert secret not in logged
        assert secret not in responses


async def test_wrong_kek_cannot_read_the_store(redis: aioredis.Redis, clock) -> None:
    from issuer.errors import KekError
    from issuer.signer import Signer

    app = create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)
    await app.state.authority.bootstrap()
    other = create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False,
                       kek=Kek(bytes(32)))  # fmt: skip
    with pytest.raises(KekError, match="KEK id") as info:
        await Signer(other.state.authority).sign({"sub": "x"})
    assert KEK_BYTES.hex() not in str(info.value)
