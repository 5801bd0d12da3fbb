"""Secrets and URL credentials never reach a log line."""

import base64
import logging

from tests.relay.servers import Receiver, Reply, Server, until


async def test_logs_carry_no_secret_and_no_url_credentials(caplog, issuer, make_relay) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver()
    receiver.script = [Reply(500), Reply(503, headers={"retry-after": "0"})]
    async with Server(receiver) as server, make_relay() as relay:
        url = f"http://hook-user:hunter2@127.0.0.1:{server.port}/in?token=sekrit"
        partner, secret = await relay.partners.register(url)
        _, rotated = await relay.partners.rotate_secret(partner.id)
        receiver.secrets += [secret, rotated]
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 1)
        await relay.partners.register("https://user:pw-in-refused-url@0x7f000001/x?token=sekrit")
        await issuer.add_key()
        await until(lambda: len(receiver.accepted) == 2)

    # The credentials still reach the partner, as HTTP Basic auth.
    expected = "Basic " + base64.b64encode(b"hook-user:hunter2").decode()
    assert receiver.got[0].headers["authorization"] == expected
    text = caplog.text
    assert "delivery delivered" in text and "HTTP Request" in text
    for leak in ("hunter2", "sekrit", "pw-in-refused-url", "whsec_", secret[6:], rotated[6:]):
        assert leak not in text
