"""The admin API over ASGI, on a running relay with a real receiver."""

import httpx
import pytest
import redis.asyncio as aioredis

from keyherald.redis_server import free_port
from relay.api import create_app
from relay.egress import EgressPolicy
from relay.errors import ConfigError
from tests.relay.conftest import build_relay
from tests.relay.servers import Receiver, Reply, Server, until

TOKEN = "admin-" + "x" * 26


def consumed(relay):
    """Condition: the relay's group has read and acknowledged every stream entry."""

    async def check() -> bool:
        redis, stream = relay.redis, relay.consumer.stream
        (group,) = await redis.xinfo_groups(stream)
        last = await redis.xrevrange(stream, count=1)
        return group["pending"] == 0 and group["last-delivered-id"] == last[0][0]

    return check


def admin_client(relay) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(relay, TOKEN)),
        base_url="http://relay.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


async def test_admin_calls_need_the_bearer_token(make_relay) -> None:
    relay = make_relay()
    transport = httpx.ASGITransport(app=create_app(relay, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as anon:
        assert (await anon.get("/admin/partners")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await anon.get("/admin/partners", headers=wrong)).status_code == 401
        assert (await anon.get("/metrics")).status_code == 401  # partner ids are not public
        assert (await anon.get("/openapi.json")).status_code == 404
        assert (await anon.get("/healthz")).status_code == 200
    transport = httpx.ASGITransport(app=create_app(relay, None))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as anon:
        response = await anon.get("/admin/partners", headers={"Authorization": "Bearer "})
        assert response.status_code == 401


async def test_partner_lifecycle_through_the_api(issuer, make_relay) -> None:
    receiver = Receiver()
    async with Server(receiver) as server, make_relay() as relay, admin_client(relay) as api:
        created = await api.post(
            "/admin/partners",
            json={"url": server.url + "/in?token=abc", "description": "billing"},
        )
        assert created.status_code == 201
        body = created.json()
        pid, secret = body["id"], body["secret"]
        receiver.secrets.append(secret)
        assert body["url"] == server.url + "/in"  # no query shown back
        listed = (await api.get("/admin/partners")).json()
        assert [p["id"] for p in listed] == [pid] and secret not in str(listed)

        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 1)

        async def attempt_listed():
            return (await api.get(f"/admin/partners/{pid}/attempts")).json()

        await until(attempt_listed)
        (attempt,) = await attempt_listed()
        assert attempt["status"] == "200" and attempt["outcome"] == "delivered"
        assert float(attempt["latency_ms"]) > 0 and attempt["version"] == "1"

        rotated = (await api.post(f"/admin/partners/{pid}/rotate-secret")).json()
        assert rotated["secret"] != secret and len(rotated["secrets"]) == 2
        receiver.secrets.append(rotated["secret"])

        disabled = (await api.post(f"/admin/partners/{pid}/disable")).json()
        assert disabled["enabled"] is False and disabled["disabled_reason"] == "manual"
        await issuer.add_key()  # not queued for a disabled partner
        await until(consumed(relay))
        assert (await api.post(f"/admin/partners/{pid}/enable")).json()["enabled"] is True

        replay = await api.post(f"/admin/partners/{pid}/replay", json={"from_version": 1})
        assert replay.status_code == 202 and replay.json()["queued"] == 2
        await until(lambda: len(receiver.accepted) == 3)
        # Both secrets sign during the overlap.
        assert receiver.got[-1].verified_by == [0, 1]

        async def drained():
            return (await api.get(f"/admin/partners/{pid}")).json()["queued"] == 0

        await until(drained)  # the receiver saw the last request before the relay saw the 200

        assert (await api.delete(f"/admin/partners/{pid}")).status_code == 204
        assert (await api.get(f"/admin/partners/{pid}")).status_code == 404
        assert (
            await api.post(f"/admin/partners/{pid}/replay", json={"from_version": 1})
        ).status_code == 404

        metrics = (await api.get("/metrics")).text
    assert [d.version for d in receiver.got] == [1, 1, 2]
    assert 'keyherald_relay_deliveries_total{outcome="delivered",partner="' in metrics


async def test_bad_registrations_are_refused(make_relay) -> None:
    relay = make_relay()
    async with admin_client(relay) as api:
        for body in (
            {"url": "ftp://hooks.example/"},
            {"url": "https://hooks.example/", "event_types": ["nope"]},
            {"event_types": ["key-added"]},
        ):
            assert (await api.post("/admin/partners", json=body)).status_code == 422
        response = await api.post("/admin/partners/ptr_x/replay", json={"from_version": 0})
        assert response.status_code == 422


async def test_dead_letters_are_listed(issuer, make_relay) -> None:
    receiver = Receiver()
    receiver.script = [Reply(500), Reply(500)]
    async with (
        Server(receiver) as server,
        make_relay(schedule=[0, 0.01]) as relay,
        admin_client(relay) as api,
    ):
        created = (await api.post("/admin/partners", json={"url": server.url})).json()
        await issuer.add_key()

        async def listed():
            return (await api.get("/admin/dead-letters")).json()

        await until(listed)
        (dead,) = await listed()
    assert dead["kind"] == "delivery" and dead["partner"] == created["id"]
    assert dead["version"] == "1" and dead["reason"] == "status"


async def test_redis_down_is_a_503_to_retry_not_a_500(issuer, jwks_http) -> None:
    """A Redis that restarts or is unreachable answers 503 with Retry-After (an operator or a
    script retries it), never an internal error."""
    down = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        relay = build_relay(down, issuer, jwks_http)
        async with admin_client(relay) as api:
            response = await api.get("/admin/partners")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"] == "store_unavailable"
    finally:
        await down.aclose()


@pytest.mark.parametrize(
    ("url", "allow", "error"),
    [
        ("http://127.0.0.1:8080/hook", [], "forbidden_address"),
        ("https://[::1]/hook", [], "forbidden_address"),
        ("http://169.254.169.254/latest/meta-data/", [], "forbidden_address"),
        ("https://10.1.2.3/hook", ["127.0.0.1"], "forbidden_address"),
        ("https://[fec0::1]/hook", [], "forbidden_address"),
        ("https://[::ffff:127.0.0.1]/hook", [], "forbidden_address"),
        ("http://hooks.example/in", [], "https_required"),
        ("http://93.184.216.34/in", ["127.0.0.1"], "https_required"),
        ("ftp://hooks.example/", [], "bad_url"),
        ("https://hooks.example/" + "a" * 2048, [], "bad_url"),
    ],
)
async def test_urls_that_can_never_be_delivered_to_are_refused_at_registration(
    make_relay, url, allow, error
) -> None:
    relay = make_relay(egress_policy=EgressPolicy.from_strings(allow))
    async with admin_client(relay) as api:
        response = await api.post("/admin/partners", json={"url": url})
        assert response.status_code == 422, response.text
        if len(url) <= 2048:  # a longer one is refused by the request model already
            assert response.json()["error"] == error
        assert (await api.get("/admin/partners")).json() == []


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("https://hooks.example/in", []),
        ("https://93.184.216.34/in", []),
        ("http://127.0.0.1:8080/hook", ["127.0.0.1"]),
        # A host name may resolve to an allow-listed address: checked at each delivery.
        ("http://partner:8080/hook", ["172.28.0.0/24"]),
    ],
)
async def test_urls_that_may_be_delivered_to_are_accepted(make_relay, url, allow) -> None:
    relay = make_relay(egress_policy=EgressPolicy.from_strings(allow))
    async with admin_client(relay) as api:
        response = await api.post("/admin/partners", json={"url": url})
    assert response.status_code == 201, response.text


async def test_descriptions_and_urls_have_a_size_limit(make_relay) -> None:
    relay = make_relay()
    async with admin_client(relay) as api:
        url = "https://hooks.example/in"
        long = await api.post("/admin/partners", json={"url": url, "description": "d" * 1025})
        fits = await api.post("/admin/partners", json={"url": url, "description": "d" * 1024})
        too_long_url = await api.post("/admin/partners", json={"url": url + "/" + "u" * 2048})
    assert long.status_code == 422 and "1024" in long.text
    assert fits.status_code == 201
    assert too_long_url.status_code == 422 and "2048" in too_long_url.text
    with pytest.raises(ConfigError) as e:
        await relay.partners.register(url, description="d" * 1025)
    assert e.value.reason == "bad_description"
