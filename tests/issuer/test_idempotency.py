"""``Idempotency-Key`` on the admin changes, through the real app (ASGI) on the test Redis:
a retry gets the first result and changes nothing; another request under the key is a 422;
a malformed key a 400; a record altered in Redis is neither replayed nor carried out again."""

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from issuer.app import create_app
from issuer.authority import Authority
from issuer.idempotency import IdempotencyRecords
from issuer.settings import IssuerSettings
from subscriber import redis_keys
from subscriber.clock import ManualClock
from tests.issuer.conftest import ADMIN_TOKEN, ISSUER, make_settings
from tests.issuer.helpers import stream_events

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def keyed(key: str) -> dict[str, str]:
    return {**ADMIN, "Idempotency-Key": key}


def record_name(key: str) -> str:
    return redis_keys.idempotency_record(ISSUER, key)


async def test_a_retried_rotation_gets_the_first_answer_and_adds_one_key(
    http: httpx.AsyncClient, authority: Authority, redis: aioredis.Redis
) -> None:
    await authority.snapshot()
    events = len(await stream_events(redis, authority))
    first = await http.post("/admin/rotate", headers=keyed("rotate-7f3a"))
    again = await http.post("/admin/rotate", headers=keyed("rotate-7f3a"))
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    [added] = first.json()["events"]
    assert [k.kid for k in await authority.keys()][-1] == added["kid"]
    assert len(await authority.keys()) == 2
    assert len(await stream_events(redis, authority)) == events + 1


@pytest.mark.parametrize("action", ["activate", "retire", "revoke"])
async def test_a_retried_key_change_is_replayed_not_refused(
    http: httpx.AsyncClient,
    authority: Authority,
    redis: aioredis.Redis,
    clock: ManualClock,
    settings: IssuerSettings,
    action: str,
) -> None:
    kid = (await authority.rotate()).events[0].kid
    clock.advance(settings.lead_s)
    events = len(await stream_events(redis, authority))
    path = f"/admin/keys/{kid}/{action}"
    first = await http.post(path, headers=keyed(f"{action}-1"))
    again = await http.post(path, headers=keyed(f"{action}-1"))
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert len(await stream_events(redis, authority)) == events + len(first.json()["events"])
    # What the same retry gets without the key: a refusal that does not say it was done.
    unkeyed = await http.post(path, headers=ADMIN)
    assert unkeyed.status_code == 409


async def test_the_key_of_one_request_refuses_another_with_a_422(
    http: httpx.AsyncClient, authority: Authority
) -> None:
    kid = (await authority.rotate()).events[0].kid
    assert (await http.post("/admin/rotate", headers=keyed("shared"))).status_code == 201
    keys = await authority.keys()
    for path, body in (
        (f"/admin/keys/{kid}/retire", b""),  # another path
        ("/admin/rotate", b'{"note": "x"}'),  # another body
        ("/admin/rotate?note=x", b""),  # another query
    ):
        refused = await http.post(path, headers=keyed("shared"), content=body)
        assert refused.status_code == 422, path
        assert refused.json()["error"] == "idempotency_key_reused"
        assert "Idempotency-Key 'shared' was used for another request" in refused.json()["detail"]
        assert "POST /admin/rotate" in refused.json()["detail"]
    assert await authority.keys() == keys


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=ISSUER)


async def test_concurrent_requests_under_one_key_make_one_change(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    # Two issuer replicas on one Redis, 16 requests each at once: within a replica they queue
    # on its change lock, across replicas the commit script finds the winner's record.
    apps = [
        create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)
        for _ in range(2)
    ]
    for app in apps:
        await app.state.authority.snapshot()
    async with _client(apps[0]) as first, _client(apps[1]) as second:
        answers = await asyncio.gather(
            *(
                c.post("/admin/rotate", headers=keyed("once"))
                for _ in range(16)
                for c in (first, second)
            )
        )
    assert {a.status_code for a in answers} == {201}
    assert len({a.content for a in answers}) == 1
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
    assert len(await apps[0].state.authority.keys()) == 2


async def test_a_key_is_free_again_once_its_record_expired(
    http: httpx.AsyncClient, authority: Authority, redis: aioredis.Redis, clock: ManualClock
) -> None:
    retention_s = make_settings().idempotency_retention_s
    first = await http.post("/admin/rotate", headers=keyed("daily"))
    # Redis drops the record itself after the retention; the issuer's clock decides before.
    assert retention_s * 1000 - 5_000 < await redis.pttl(record_name("daily")) <= retention_s * 1000
    clock.advance(retention_s - 1)
    replayed = await http.post("/admin/rotate", headers=keyed("daily"))
    assert replayed.content == first.content and replayed.headers["idempotent-replayed"]
    clock.advance(1)
    fresh = await http.post("/admin/rotate", headers=keyed("daily"))
    assert fresh.status_code == 201 and "idempotent-replayed" not in fresh.headers
    assert fresh.json()["events"][0]["kid"] != first.json()["events"][0]["kid"]
    assert len(await authority.keys()) == 3
    # The expired record was replaced by the new change's.
    again = await http.post("/admin/rotate", headers=keyed("daily"))
    assert again.content == fresh.content and again.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    "value",
    [b"", b"x" * 256, b"caf\xc3\xa9", b"tab\there", b"bell\x07", b'"a"b"', b'"a\\b"', b'""'],
    ids=["empty", "256-chars", "utf-8", "tab", "control", "bare-quote", "bad-escape", "empty-sf"],
)
async def test_a_malformed_key_is_a_400_naming_the_header(
    http: httpx.AsyncClient, authority: Authority, value: bytes
) -> None:
    await authority.snapshot()
    headers = [(b"Authorization", f"Bearer {ADMIN_TOKEN}".encode()), (b"Idempotency-Key", value)]
    refused = await http.post("/admin/rotate", headers=headers)
    assert refused.status_code == 400, value
    assert refused.json()["error"] == "invalid_idempotency_key"
    assert refused.json()["detail"].startswith("Idempotency-Key ")
    assert len(await authority.keys()) == 1


async def test_keys_the_draft_and_stripe_allow(
    http: httpx.AsyncClient, authority: Authority
) -> None:
    longest = "k" * 255
    assert (await http.post("/admin/rotate", headers=keyed(longest))).status_code == 201
    # The draft's structured-field string and Stripe's bare token name the same key.
    quoted = await http.post("/admin/rotate", headers=keyed('"8e03978e-40d5"'))
    bare = await http.post("/admin/rotate", headers=keyed("8e03978e-40d5"))
    assert bare.content == quoted.content and bare.headers["idempotent-replayed"] == "true"
    escaped = await http.post("/admin/rotate", headers=keyed('"say \\"hi\\""'))
    plain = await http.post("/admin/rotate", headers=keyed('say "hi"'))
    assert plain.content == escaped.content and plain.headers["idempotent-replayed"] == "true"
    twice = [
        (b"Authorization", f"Bearer {ADMIN_TOKEN}".encode()),
        (b"Idempotency-Key", b"a"),
        (b"Idempotency-Key", b"b"),
    ]
    refused = await http.post("/admin/rotate", headers=twice)
    assert refused.status_code == 400 and "sent 2 times" in refused.json()["detail"]
    assert len(await authority.keys()) == 4


async def test_without_the_header_nothing_is_recorded_and_every_request_acts(
    http: httpx.AsyncClient, authority: Authority, redis: aioredis.Redis
) -> None:
    answers = [await http.post("/admin/rotate", headers=ADMIN) for _ in range(2)]
    assert [a.status_code for a in answers] == [201, 201]
    assert not any("idempotent-replayed" in a.headers for a in answers)
    assert len(await authority.keys()) == 3
    assert [k async for k in redis.scan_iter(match="*:idem:*")] == []


# -- Redis is not trusted with the records ------------------------------------------------


async def _genuine(http: httpx.AsyncClient, redis: aioredis.Redis, key: str) -> str:
    assert (await http.post("/admin/rotate", headers=keyed(key))).status_code == 201
    raw: bytes = await redis.get(record_name(key))
    return raw.decode()


def _edit(raw: str, **changes: Any) -> str:
    mac, payload = raw.split(".", 1)
    return f"{mac}.{json.dumps({**json.loads(payload), **changes})}"


async def _altered(http, redis, clock) -> str:
    # The attacker claims the rotation published a key of theirs.
    raw = await _genuine(http, redis, "k")
    body = json.loads(json.loads(raw.split(".", 1)[1])["body"])
    body["events"][0]["kid"] = "attacker-kid"
    await redis.set(record_name("k"), _edit(raw, body=json.dumps(body)), keepttl=True)
    return "k"


async def _backdated(http, redis, clock) -> str:
    # An expiry in the past would have the change made again.
    raw = await _genuine(http, redis, "k")
    await redis.set(record_name("k"), _edit(raw, expires_at=clock() - 1), keepttl=True)
    return "k"


async def _forged(http, redis, clock) -> str:
    # A record the issuer never wrote, under a key nobody used, with a MAC made up.
    raw = await _genuine(http, redis, "k")
    await redis.set(record_name("fresh"), "0" * 64 + "." + _edit(raw, key="fresh").split(".", 1)[1])
    return "fresh"


async def _copied(http, redis, clock) -> str:
    # A genuine record of the same request, moved under another key.
    await redis.set(record_name("fresh"), await _genuine(http, redis, "k"))
    return "fresh"


async def _not_a_string(http, redis, clock) -> str:
    await redis.hset(record_name("fresh"), "status", "201")
    return "fresh"


@pytest.mark.parametrize("attack", [_altered, _backdated, _forged, _copied, _not_a_string])
async def test_a_record_altered_in_redis_is_neither_replayed_nor_carried_out_again(
    http: httpx.AsyncClient,
    authority: Authority,
    redis: aioredis.Redis,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    attack: Any,
) -> None:
    key = await attack(http, redis, clock)
    keys = await authority.keys()
    events = len(await stream_events(redis, authority))
    refused = await http.post("/admin/rotate", headers=keyed(key))
    assert refused.status_code == 503
    assert refused.json()["error"] == "idempotency_record_tampered"
    assert "Idempotency-Key does not authenticate" in refused.json()["detail"]
    assert "retry-after" not in refused.headers
    assert await authority.keys() == keys
    assert len(await stream_events(redis, authority)) == events
    assert "TAMPERING: the idempotency record for POST /admin/rotate" in caplog.text
    metrics = (await http.get("/admin/metrics", headers=ADMIN)).text
    assert "keyherald_issuer_store_tampered_total 1.0" in metrics


def test_the_retention_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_settings().idempotency_retention_s == 86_400
    monkeypatch.setenv("KEYHERALD_IDEMPOTENCY_RETENTION_S", "3600")
    assert make_settings().idempotency_retention_s == 3600
    for bad in (0, -1, 31 * 86_400):
        with pytest.raises(ValidationError, match="idempotency_retention_s"):
            make_settings(idempotency_retention_s=bad)
    with pytest.raises(ValueError, match="retention_s must be greater than 0, the input is 0"):
        IdempotencyRecords(make_settings().load_kek(), ISSUER, retention_s=0)
