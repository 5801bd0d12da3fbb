"""Egress safety with real sockets: address classes, pinning, redirects, deadlines, caps."""

import ipaddress
import time

import httpx
import pytest

from relay import egress
from relay.egress import EgressPolicy, forbidden_reason, redact_url, retry_after_s
from relay.errors import EgressRefused
from tests.relay.servers import Receiver, Reply, Server, until

LOCAL = EgressPolicy.from_strings(["127.0.0.1"])
PUBLIC_V4 = "93.184.216.34"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("169.254.169.254", "link_local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link_local"),
        ("fec0::1", "site_local"),
        ("feff:ffff::1", "site_local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "embedded_loopback"),
        ("::ffff:169.254.169.254", "embedded_link_local"),
        ("::ffff:10.0.0.1", "embedded_private"),
        ("::127.0.0.1", "embedded_loopback"),
        ("64:ff9b::7f00:1", "embedded_loopback"),
        ("64:ff9b::a9fe:a9fe", "embedded_link_local"),
        ("64:ff9b:1::a00:1", "embedded_private"),
        ("2002:7f00:1::", "embedded_loopback"),
        ("2002:c0a8:101::1", "embedded_private"),
        ("2002:6440:1::", "embedded_cgnat"),
    ],
)
def test_internal_addresses_are_forbidden(address: str, reason: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", [PUBLIC_V4, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://0x7f000001/hook",  # hex form of 127.0.0.1, as inet_aton reads it
        "https://2130706433/hook",  # decimal form
        "https://127.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::1]/hook",
        "https://localhost/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://0.0.0.0/",
        "https://[::]/",
        "https://100.100.100.200/",
        "https://[64:ff9b::a9fe:a9fe]/",
    ],
)
async def test_internal_urls_are_refused_after_real_resolution(url: str) -> None:
    with pytest.raises(EgressRefused) as e:
        await EgressPolicy().pin(EgressPolicy().check_url(url))
    assert e.value.reason == "forbidden_address"


def test_an_octal_host_is_not_even_a_url() -> None:
    # httpx refuses it before resolution; either way nothing is sent.
    with pytest.raises(EgressRefused):
        EgressPolicy().check_url("https://0177.0.0.1/hook")


async def static_dns(host: str, port: int) -> list[str]:
    table = {
        "partner.test": [PUBLIC_V4],
        "mixed.test": [PUBLIC_V4, "10.0.0.7"],
        "internal.test": ["fd00::5"],
    }
    if host not in table:
        raise OSError(f"no such host {host}")
    return table[host]


async def test_a_host_with_any_internal_answer_is_refused() -> None:
    policy = EgressPolicy()
    assert str(await policy.pin(httpx.URL("https://partner.test/"), static_dns)) == PUBLIC_V4
    for url in ("https://mixed.test/", "https://internal.test/"):
        with pytest.raises(EgressRefused, match="forbidden address"):
            await policy.pin(httpx.URL(url), static_dns)
    with pytest.raises(EgressRefused) as e:
        await policy.pin(httpx.URL("https://nowhere.test/"), static_dns)
    assert e.value.reason == "resolve_failed"


async def test_https_is_required_unless_allow_listed() -> None:
    with pytest.raises(EgressRefused) as e:
        await EgressPolicy().pin(httpx.URL("http://partner.test/"), static_dns)
    assert e.value.reason == "https_required"
    assert str(await LOCAL.pin(httpx.URL("http://127.0.0.1:9/"))) == "127.0.0.1"
    # The allow-list is exact: other loopback forms stay forbidden.
    for url in ("http://[::ffff:127.0.0.1]/", "http://127.0.0.2/", "http://[::1]/"):
        with pytest.raises(EgressRefused):
            await LOCAL.pin(httpx.URL(url))


@pytest.mark.parametrize("url", ["ftp://partner.test/", "not a url", "http:///path", "//x/"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(EgressRefused) as e:
        EgressPolicy().check_url(url)
    assert e.value.reason == "bad_url"


def test_allow_list_entries_are_checked() -> None:
    with pytest.raises(ValueError, match='"localhost"'):
        EgressPolicy.from_strings(["localhost"])


async def post(url: str, policy: EgressPolicy = LOCAL, **kw):
    async with egress.new_client() as client:
        return await egress.post(
            client,
            url,
            content=b"{}",
            headers={"content-type": "application/json"},
            policy=policy,
            deadline_s=kw.pop("deadline_s", 2.0),
            max_response_bytes=kw.pop("max_response_bytes", 1024),
            **kw,
        )


async def test_the_checked_address_is_the_one_connected_to() -> None:
    """DNS rebinding: the second answer points inside, but the request already went to the
    first (checked) address, with the partner's host name in ``Host``."""
    receiver = Receiver()
    answers = []

    async def rebinding_dns(host: str, port: int) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"] if len(answers) == 1 else ["10.0.0.1"]

    async with Server(receiver) as server:
        response = await post(f"http://rebind.test:{server.port}/hook", resolver=rebinding_dns)
    assert response.status == 200
    assert answers == ["rebind.test"]
    assert receiver.got[0].headers["host"] == f"rebind.test:{server.port}"


async def test_redirects_are_never_followed() -> None:
    internal = Receiver()
    redirector = Receiver()
    async with Server(internal, host="127.0.0.2") as inside, Server(redirector) as outside:
        for target in (inside.url + "/admin", "http://169.254.169.254/latest/meta-data/"):
            redirector.script = [Reply(302, headers={"location": target})]
            response = await post(outside.url)
            assert response.status == 302
    assert len(redirector.got) == 2
    assert internal.got == []


async def test_a_trickling_receiver_is_cut_off_at_the_deadline() -> None:
    receiver = Receiver()
    receiver.script = [Reply(200, body=b"x" * 100, trickle_s=0.05)]
    async with Server(receiver) as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await post(server.url, deadline_s=0.5)
        elapsed = time.monotonic() - started
    # 100 bytes at 50 ms each would take 5 s.
    assert 0.45 <= elapsed < 2.5, elapsed


async def test_a_hanging_receiver_is_cut_off_at_the_deadline() -> None:
    receiver = Receiver()
    receiver.script = [Reply(200, delay_s=5.0)]
    async with Server(receiver) as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await post(server.url, deadline_s=0.3)
        assert time.monotonic() - started < 2.0


async def test_only_a_capped_number_of_response_bytes_is_read() -> None:
    receiver = Receiver()
    receiver.script = [Reply(200, body=b"y" * 1_000_000)]
    async with Server(receiver) as server:
        response = await post(server.url, max_response_bytes=1024)
    assert response.status == 200
    assert response.body == b"y" * 1024 and response.truncated


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_s("120", now=0) == 120
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30
    assert retry_after_s("soon", now=0) is None
    assert retry_after_s(None, now=0) is None


def test_redacted_urls_carry_no_credentials_or_query() -> None:
    assert (
        redact_url("https://user:hunter2@hooks.example:8443/in?token=abc")
        == "https://hooks.example:8443/in"
    )
    assert redact_url("http://[::1]:8080/x?a=b") == "http://[::1]:8080/x"


async def test_relay_never_contacts_an_internal_partner(issuer, make_relay) -> None:
    receiver = Receiver()
    async with Server(receiver) as server:
        relay = make_relay(egress_policy=EgressPolicy.from_strings(["192.0.2.1"]))
        async with relay:
            partner, _ = await relay.partners.register(
                f"https://0x7f000001:{server.port}/hook", None
            )
            await issuer.add_key()

            async def refused():
                attempts = await relay.deliverer.store.attempts(partner.id)
                return attempts and attempts[0]["error"] == "forbidden_address"

            await until(refused)
    assert receiver.got == []
