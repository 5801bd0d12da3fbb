"""https to a pinned address: the TLS server name and certificate check stay on the partner's
host name while the socket goes to the address the relay checked."""

import ipaddress
import ssl

import httpx
import pytest

from relay import egress
from relay.egress import EgressPolicy
from tests.certs import CertificateAuthority
from tests.relay.servers import Receiver, Server


async def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


@pytest.mark.parametrize(("cert_host", "ok"), [("partner.test", True), ("other.test", False)])
async def test_https_to_the_pinned_address_verifies_the_partner_name(
    tmp_path, cert_host: str, ok: bool
) -> None:
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.issue("partner", hosts=(cert_host,))
    receiver = Receiver()
    server = Server(receiver, ssl_certfile=cert, ssl_keyfile=key)
    context = ssl.create_default_context(cafile=ca.cert_file)
    policy = EgressPolicy((ipaddress.ip_network("127.0.0.1/32"),))
    async with (
        server,
        httpx.AsyncClient(verify=context, trust_env=False, follow_redirects=False) as client,
    ):
        url = f"https://partner.test:{server.port}/hook"
        send = egress.post(
            client,
            url,
            content=b"{}",
            headers={},
            policy=policy,
            deadline_s=2.0,
            max_response_bytes=100,
            resolver=loopback,
        )
        if ok:
            assert (await send).status == 200
        else:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await send
    if ok:
        assert receiver.got[0].headers["host"] == f"partner.test:{server.port}"
    else:
        assert receiver.got == []
