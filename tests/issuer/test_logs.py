"""Operators can follow the issuer in its logs: one structured line per announced change."""

import logging

import pytest

from issuer.authority import Authority
from subscriber.clock import ManualClock


def _changes(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int]]:
    return [
        (r.event, r.kid, r.version)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "issuer.authority" and hasattr(r, "event")
    ]


async def test_every_change_is_logged_with_its_fields(
    authority: Authority, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="issuer")
    await authority.bootstrap()
    new = (await authority.rotate()).events[0].kid
    clock.advance(6 * 86_400)
    await authority.tick()
    first = _changes(caplog)[0][1]
    assert _changes(caplog) == [
        ("key-added", first, 1), ("key-activated", first, 2), ("key-added", new, 3),
        ("key-activated", new, 4),
    ]  # fmt: skip
    assert f"key-activated kid={new} version=4" in caplog.messages


async def test_store_initialisation_and_revocation_are_warnings(
    authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="issuer")
    snap = await authority.bootstrap()
    (kid,) = snap.keys
    await authority.revoke(kid)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("initialised an empty key store" in m and str(snap.epoch) in m for m in warnings)
    assert f"key {kid} revoked" in warnings
