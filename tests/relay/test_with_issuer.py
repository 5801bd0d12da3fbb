"""End to end with the real issuer (in-process, manual clock): the issuer's own events and
JWKS reach a partner over real HTTP, and the partner can check every event's issuer signature
itself."""

import httpx

from issuer.app import create_app
from relay.egress import EgressPolicy
from relay.keysource import JwksKeySource
from relay.service import Relay
from subscriber.events import load_announcement_keys, parse_event
from subscriber.jwks_client import JwksClient
from tests.issuer.conftest import ISSUER, make_settings
from tests.relay.conftest import make_policy
from tests.relay.servers import Receiver, Server, until


async def test_issuer_events_reach_a_partner_with_the_full_key_set(redis, clock) -> None:
    app = create_app(settings=make_settings(), redis=redis, clock=clock, run_scheduler=False)
    authority = app.state.authority
    await authority.bootstrap()
    receiver = Receiver()
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url=ISSUER) as issuer_http,
        Server(receiver) as server,
    ):
        jwks = JwksClient(issuer_http, ISSUER)
        metadata = await jwks.fetch_metadata()
        announce = load_announcement_keys(metadata.announcement_keys)
        relay = Relay(
            redis,
            ISSUER,
            announce,
            JwksKeySource(jwks),
            policy=make_policy(),
            egress_policy=EgressPolicy.from_strings(["127.0.0.1"]),
            consumer="relay-e2e",
            block_ms=50,
        )
        partner, secret = await relay.partners.register(server.url + "/keyherald")
        receiver.secrets.append(secret)
        async with relay:
            added = await authority.rotate()
            await authority.revoke((await authority.signing_key()).kid)
            final = (await authority.snapshot()).version
            await until(lambda: receiver.accepted and receiver.accepted[-1].version == final)
            current = (await issuer_http.get("/.well-known/jwks.json")).json()

    versions = [d.version for d in receiver.got]
    # Every event the issuer wrote (bootstrap, rotation, revocation), once, in order.
    assert versions == list(range(1, final + 1)) and added.version in versions
    assert all(d.verified_by == [0] for d in receiver.got)
    for delivery in receiver.got:
        data = delivery.json["data"]
        # The partner need not trust the relay: the issuer's signature travels with the event.
        event = parse_event({"jws": data["jws"]}, announce, issuer=ISSUER)
        assert event.payload() == data["event"]
        assert data["version"] >= event.version
    assert receiver.got[-1].json["data"]["jwks"] == current
