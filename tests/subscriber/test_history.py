"""The signed history primitives: snapshots, freshness records, digests, and the caps."""

import asyncio
import dataclasses

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subscriber.constants import max_announcement_bytes, max_document_bytes
from subscriber.errors import EventError, FetchError, InvalidKey
from subscriber.events import announcement_jwk, load_announcement_keys, parse_event
from subscriber.history import (
    Freshness,
    KeySetSnapshot,
    SnapshotKey,
    parse_freshness,
    parse_snapshot,
    sign_freshness,
    sign_snapshot,
    state_digest,
)
from subscriber.jwk import ED25519_SMALL_ORDER, load_public_jwk
from subscriber.jwks_client import JwksClient
from subscriber.jws import b64url_encode
from tests.keys import es256_jwk

ISSUER = "https://id.example.com"


def signed(now: float = 100.0, **changes: object) -> tuple[str, dict, KeySetSnapshot]:
    key = Ed25519PrivateKey.generate()
    jwk = announcement_jwk(key.public_key())
    a = es256_jwk()
    usable = (SnapshotKey(jwk=a, state="active", activate_at=1.0),)
    digest = state_digest(ISSUER, "e1", 3, [k.entry() for k in usable])
    body = KeySetSnapshot(ISSUER, "e1", 3, digest, now, now + 60, usable, {"old": "revoked"})
    body = dataclasses.replace(body, **changes)  # type: ignore[arg-type]
    return sign_snapshot(body, key, jwk["kid"]), load_announcement_keys([jwk]), body


def test_a_snapshot_round_trips_and_names_its_gone_keys() -> None:
    token, keys, body = signed()
    parsed = parse_snapshot(token, keys, issuer=ISSUER, now=120.0, leeway_s=0)
    assert parsed.payload() == body.payload() and parsed.token == token
    assert parsed.jwks()["keyherald"]["states"] == {body.keys[0].kid: "active", "old": "revoked"}


@pytest.mark.parametrize(
    ("changes", "now", "reason"),
    [
        ({}, 161.0, "expired_snapshot"),  # past exp
        ({"issuer": "https://other.example"}, 120.0, "wrong_issuer"),
        ({"digest": "sha256:not-these-keys"}, 120.0, "bad_digest"),
        ({"version": 4}, 120.0, "bad_digest"),  # the digest binds the version
    ],
)
def test_a_snapshot_that_is_old_foreign_or_inconsistent_is_refused(changes, now, reason) -> None:
    token, keys, _ = signed(**changes)
    with pytest.raises(EventError) as info:
        parse_snapshot(token, keys, issuer=ISSUER, now=now, leeway_s=0)
    assert info.value.reason == reason


def test_a_snapshot_signed_by_anyone_else_is_forged() -> None:
    token, keys, _ = signed()
    _, other_keys, _ = signed()
    header, payload, _ = token.split(".")
    mallory = Ed25519PrivateKey.generate()
    resigned = f"{header}.{payload}.{b64url_encode(mallory.sign(f'{header}.{payload}'.encode()))}"
    for bad, trusted in ((token, other_keys), (resigned, keys)):
        with pytest.raises(EventError) as info:
            parse_snapshot(bad, trusted, issuer=ISSUER, now=120.0, leeway_s=0)
        assert info.value.reason == "forged_event"


def test_a_freshness_record_is_signed_and_for_one_issuer() -> None:
    key = Ed25519PrivateKey.generate()
    jwk = announcement_jwk(key.public_key())
    keys = load_announcement_keys([jwk])
    record = Freshness(ISSUER, "e1", 3, "sha256:x", 50.0)
    fields = sign_freshness(record, key, jwk["kid"])
    assert parse_freshness(fields, keys, issuer=ISSUER) == record
    with pytest.raises(EventError):
        parse_freshness(fields, keys, issuer="https://other.example")
    forged = sign_freshness(record, Ed25519PrivateKey.generate(), jwk["kid"])
    with pytest.raises(EventError) as info:
        parse_freshness(forged, keys, issuer=ISSUER)
    assert info.value.reason == "forged_event"


def test_an_oversized_stream_entry_is_refused_before_it_is_parsed() -> None:
    _, keys, _ = signed()
    huge = "a" * (max_announcement_bytes + 1)
    with pytest.raises(EventError, match="larger than"):
        parse_event({"jws": huge}, keys, issuer=ISSUER)


async def test_an_oversized_document_is_refused_without_holding_it() -> None:
    """A real HTTP server on loopback that answers with 64 MiB: the client stops reading past
    the cap and closes the connection."""
    sent = {"bytes": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        size = 64 * max_document_bytes
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        try:
            for _ in range(size // 65_536):
                writer.write(b"x" * 65_536)
                await writer.drain()
                sent["bytes"] += 65_536
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient() as http:
            client = JwksClient(http, ISSUER, snapshot_url=f"http://127.0.0.1:{port}/s")
            with pytest.raises(FetchError, match="larger than"):
                await client.fetch_snapshot()
    finally:
        server.close()
        await server.wait_closed()
    assert sent["bytes"] < 16 * max_document_bytes  # stopped early (kernel buffers aside)


# Edwards25519, enough of it to show each refused encoding is a point of small order.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P


def _decode(raw: bytes) -> tuple[int, int]:
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    assert (x * x - x2) % _P == 0, "not on the curve"
    if x & 1 != raw[31] >> 7:
        x = _P - x
    return x, y


def _add(p: tuple[int, int], q: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = p, q
    t = _D * x1 * x2 * y1 * y2 % _P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, _P - 2, _P) % _P,
        (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P,
    )


@pytest.mark.parametrize("raw", sorted(ED25519_SMALL_ORDER))
def test_each_small_order_ed25519_key_is_refused(raw: bytes) -> None:
    point = _decode(raw)
    eight = point
    for _ in range(3):
        eight = _add(eight, eight)
    assert eight == (0, 1)  # 8 * P is the identity: P has order 1, 2, 4 or 8
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw), "kid": "k", "alg": "EdDSA"}
    with pytest.raises(InvalidKey) as info:
        load_public_jwk(jwk)
    assert info.value.reason == "weak_key"
    with pytest.raises(InvalidKey):
        load_announcement_keys([jwk])
