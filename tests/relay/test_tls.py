"""https to a pinned address: the TLS server name and certificate check stay on the partner's
host name while the socket goes to the address the relay checked."""

import datetime
import ipaddress
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay import egress
from relay.egress import EgressPolicy
from tests.relay.servers import Receiver, Server


def _cert(tmp_path, host: str) -> tuple[str, str, str]:
    """A CA and a server certificate for ``host``; returns (ca, cert, key) file paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyherald test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


async def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


@pytest.mark.parametrize(("cert_host", "ok"), [("partner.test", True), ("other.test", False)])
async def test_https_to_the_pinned_address_verifies_the_partner_name(
    tmp_path, cert_host: str, ok: bool
) -> None:
    ca, cert, key = _cert(tmp_path, cert_host)
    receiver = Receiver()
    server = Server(receiver, ssl_certfile=cert, ssl_keyfile=key)
    context = ssl.create_default_context(cafile=ca)
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
