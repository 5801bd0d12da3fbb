"""Redis over TLS, against real TLS-only redis-servers (plaintext port off) with throwaway
certificates: the issuer and a verifier meet over ``rediss://``, mutual TLS needs the client
certificate, and a certificate the client cannot trust is refused, never worked around, with
one line that names the setting and the option to change."""

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from keyherald.cli import main
from keyherald.redis_server import RedisServer, ServerTls, free_port
from subscriber.clock import ManualClock
from subscriber.jws import b64url_decode
from subscriber.redis_conn import connect
from subscriber.redis_tls import RedisTlsError, tls_failure
from tests.certs import CertificateAuthority
from tests.relay.servers import Server
from tests.subscriber.conftest import KEK, eventually, running_issuer

StartTls = Callable[..., RedisServer]


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path)


@pytest.fixture
def tls_redis(tmp_path, ca: CertificateAuthority) -> Iterator[StartTls]:
    """Starts TLS-only servers, closed after the test. By default the certificate is ``ca``'s,
    for 127.0.0.1; ``signed_by`` and ``hosts`` make one the client should refuse."""
    servers: list[RedisServer] = []

    def start(
        *,
        auth_clients: str = "no",
        signed_by: CertificateAuthority | None = None,
        hosts: tuple[str, ...] = ("127.0.0.1",),
    ) -> RedisServer:
        issuer = signed_by or ca
        cert, key = issuer.issue(f"redis-{len(servers)}", hosts=hosts)
        tls = ServerTls(cert, key, issuer.cert_file, auth_clients)  # type: ignore[arg-type]
        server = RedisServer(persistence="none", tls=tls)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()


def kid_of(token: str) -> str:
    kid: str = json.loads(b64url_decode(token.split(".")[0]))["kid"]
    return kid


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual"])
async def test_a_rotation_reaches_a_verifier_over_tls(
    tls_redis: StartTls, ca: CertificateAuthority, clock: ManualClock, mutual: bool
) -> None:
    server = tls_redis(auth_clients="yes" if mutual else "no")
    url = f"{server.url}?ssl_ca_certs={ca.cert_file}"
    if mutual:
        cert, key = ca.issue("keyherald")
        url += f"&ssl_certfile={cert}&ssl_keyfile={key}"
    store = connect(url, setting="KEYHERALD_REDIS_URL")  # the clients create_app builds
    try:
        async with running_issuer(store.primary, clock) as issuer:
            verifier = await issuer.verifier(redis_url=url).__aenter__()
            assert verifier.health().state == "live"
            # From here on the stream is the only way a key can reach the verifier.
            issuer.transport.down = True
            applied = await issuer.authority.rotate()
            kid = applied.events[-1].kid
            await eventually(lambda: kid in verifier.keyset.view.keys, what="new key over TLS")
            await issuer.advance(issuer.settings.lead_s, tick=False)
            await issuer.authority.activate(kid)
            await eventually(lambda: verifier.keyset.view.states.get(kid) == "active")
            token = await issuer.token()
            assert kid_of(token) == kid
            assert verifier.verify(token)["sub"] == "u1"
            assert verifier.health().redis_error is None
    finally:
        await store.aclose()


#: Whether this redis-py reads the server's alert for a refused client certificate (seen on
#: 8.2; 5.3, 6.x and 7.0 mostly report the connection reset that follows it).
NAMES_REFUSED_CLIENT = int(redis.__version__.split(".")[0]) >= 8


async def refused(url: str) -> RedisTlsError | None:
    """Connect to ``url``, which must fail; the TLS problem it names, if any."""
    clients = connect(url)
    try:
        with pytest.raises(RedisConnectionError) as failed:
            await clients.primary.ping()
    finally:
        await clients.aclose()
    return tls_failure(failed.value)


async def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    tls_redis: StartTls, ca: CertificateAuthority, tmp_path
) -> None:
    server = tls_redis(auth_clients="yes")
    base = f"{server.url}?ssl_ca_certs={ca.cert_file}"
    stranger = CertificateAuthority(tmp_path, "stranger CA").issue("someone")
    for query, reason in [
        ("", "client_certificate_required"),
        (f"&ssl_certfile={stranger[0]}&ssl_keyfile={stranger[1]}", "client_certificate_refused"),
    ]:
        # In TLS 1.3 the server checks the client's certificate after the client's side of
        # the handshake is done, then alerts and closes. Every attempt is refused. Whether
        # the alert reaches the client before the reset depends on redis-py: 8.x reads it
        # (about one connection in 20 is reset first), older releases write their
        # connection set-up commands first and mostly see only the reset.
        found = [await refused(base + query) for _ in range(5)]
        named = [f for f in found if f is not None]
        assert {f.reason for f in named} <= {reason}
        if NAMES_REFUSED_CLIENT:
            assert named and "ssl_certfile=" in str(named[0])


def untrusted(
    case: str, start: StartTls, ca: CertificateAuthority, tmp_path
) -> tuple[str, aioredis.Redis]:
    """A server the client must refuse, its URL as the client has it, and a client that can
    look inside it."""
    if case == "untrusted_certificate":
        other = CertificateAuthority(tmp_path, "other CA")
        server = start(signed_by=other)
        inside = f"{server.url}?ssl_ca_certs={other.cert_file}"
    else:
        server = start(hosts=("redis.internal", "10.0.0.7"))
        inside = f"{server.url}?ssl_ca_certs={ca.cert_file}&ssl_check_hostname=false"
    return f"{server.url}?ssl_ca_certs={ca.cert_file}", aioredis.Redis.from_url(inside)


@pytest.mark.parametrize("case", ["untrusted_certificate", "name_mismatch"])
async def test_a_verifier_never_talks_to_a_redis_it_cannot_trust(
    tls_redis: StartTls, ca: CertificateAuthority, tmp_path, redis, clock, case: str
) -> None:
    url, inside = untrusted(case, tls_redis, ca, tmp_path)
    try:
        async with running_issuer(redis, clock) as issuer:
            verifier = await issuer.verifier(redis_url=url).__aenter__()
            health = verifier.health()
            assert health.state == "degraded"  # keys from the JWKS, over HTTP
            assert health.redis_error is not None and health.redis_error.startswith(case)
            assert "ssl_ca_certs=" in health.redis_error or "name" in health.redis_error
            assert verifier.verify(await issuer.token())["sub"] == "u1"
        assert await inside.dbsize() == 0  # no heartbeat, nothing written
    finally:
        await inside.aclose()


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("untrusted_certificate", "Redis's certificate is not trusted"),
        ("unreadable_ca", "ssl_ca_certs="),
    ],
)
def test_keyherald_issuer_refuses_an_untrusted_redis_in_one_line(
    tls_redis: StartTls,
    ca: CertificateAuthority,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    says: str,
) -> None:
    url, inside = untrusted("untrusted_certificate", tls_redis, ca, tmp_path)
    asyncio.run(inside.aclose())
    if case == "unreadable_ca":
        url = url.replace(ca.cert_file, str(tmp_path / "no-such-ca.pem"))
    for name in [n for n in os.environ if n.startswith("KEYHERALD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KEYHERALD_ISSUER", "https://id.example.com")
    monkeypatch.setenv("KEYHERALD_KEK", KEK)
    monkeypatch.setenv("KEYHERALD_REDIS_URL", url)
    assert main(["issuer", "--port", "1"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("keyherald issuer: KEYHERALD_REDIS_URL") and says in line
    if case == "unreadable_ca":
        assert "no-such-ca.pem cannot be read: give the path of a readable PEM file" in line
    else:
        assert line.endswith("set ssl_ca_certs= in the URL to the CA that signed it")


async def test_keyherald_status_refuses_an_untrusted_redis_in_one_line(
    tls_redis: StartTls, ca: CertificateAuthority, tmp_path, redis, clock
) -> None:
    url, inside = untrusted("name_mismatch", tls_redis, ca, tmp_path)
    await inside.aclose()
    async with running_issuer(redis, clock) as issuer, Server(issuer.app) as http:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keyherald.cli", "status",
            "--issuer", http.url, "--redis-url", url,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(status.communicate(), 30)
    assert status.returncode == 2 and out == b""
    [line] = err.decode().strip().splitlines()
    assert line.startswith("keyherald status: KEYHERALD_REDIS_URL (or the command's --redis-url)")
    assert "does not cover the host" in line and "connect by a name" in line


#: The environment each service command needs to get as far as its Redis, by prefix. The
#: relay checks Redis before it asks the issuer (nothing listens at this one).
SERVICES = {
    "watch": ("KEYHERALD_WATCH_", {"UPSTREAMS": "https://idp.example/", "KEK": KEK}),
    "relay": ("KEYHERALD_RELAY_", {"ISSUER": "https://id.example.com", "ADMIN_TOKEN": "t" * 32}),
}


@pytest.mark.parametrize("command", sorted(SERVICES))
@pytest.mark.parametrize(
    ("case", "fix"),
    [
        ("untrusted_certificate", "set ssl_ca_certs= in the URL to the CA that signed it"),
        ("name_mismatch", "connect by a name or address the certificate lists"),
    ],
    ids=["untrusted_certificate", "name_mismatch"],
)
async def test_keyherald_watch_and_relay_refuse_an_untrusted_redis_in_one_line(
    tls_redis: StartTls, ca: CertificateAuthority, tmp_path, command: str, case: str, fix: str
) -> None:
    # name_mismatch: the host-name check is keyherald's default, not redis-py 5.x's.
    url, inside = untrusted(case, tls_redis, ca, tmp_path)
    await inside.aclose()
    prefix, settings = SERVICES[command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHERALD_")}
    env |= {prefix + name: value for name, value in {**settings, "REDIS_URL": url}.items()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyherald.cli", command, "--port", str(free_port()),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:  # still serving: it did not refuse
            process.kill()
            await process.wait()
    assert process.returncode == 2, err.decode()
    [line] = err.decode().strip().splitlines()  # no traceback, no log lines
    assert line.startswith(f"keyherald {command}: {prefix}REDIS_URL: ") and line.endswith(fix)
