"""Properties of the address checks: an IPv4 address hidden in an IPv6 form is judged as the
IPv4 address itself."""

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from relay.egress import forbidden_reason

ipv4 = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)


def _same_verdict(v4: ipaddress.IPv4Address, v6: ipaddress.IPv6Address) -> None:
    inner = forbidden_reason(v4)
    assert forbidden_reason(v6) == (None if inner is None else f"embedded_{inner}")


@given(ipv4)
def test_ipv4_mapped(v4) -> None:
    _same_verdict(v4, ipaddress.IPv6Address(f"::ffff:{v4}"))


@given(ipv4)
def test_nat64(v4) -> None:
    _same_verdict(v4, ipaddress.IPv6Address((0x64FF9B << 96) | int(v4)))


@given(ipv4, st.integers(min_value=0, max_value=2**80 - 1))
def test_6to4(v4, rest) -> None:
    _same_verdict(v4, ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | rest))


@given(st.integers(min_value=0, max_value=2**128 - 1).map(ipaddress.IPv6Address))
def test_any_ipv6_gets_a_verdict_and_internal_ones_are_refused(v6) -> None:
    reason = forbidden_reason(v6)
    if v6.is_loopback or v6.is_link_local or v6.is_private or v6.is_multicast or v6.is_site_local:
        assert reason is not None
