"""The poller against the stand-in IdP: request counts over simulated days, the diff it
reports through a rotation, and early fetches that never outpace the provider.

The IdP is reached through ``httpx.ASGITransport`` (real HTTP messages, no socket) and time
is a ManualClock that the test moves to each scheduled poll: a day costs milliseconds.
"""

import asyncio
import random

import httpx
import pytest

from keyherald.standin_idp import JWKS_PATH, StandInIdP
from subscriber.clock import ManualClock
from watcher.diff import KeySetDiff
from watcher.poller import UpstreamPoller
from watcher.schedule import PollPolicy
from watcher.upstream import UpstreamClient

ISSUER = "https://idp.test"
DAY_S = 86_400.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make(
    idp: StandInIdP, clock: ManualClock, **kw: object
) -> tuple[UpstreamPoller, list[KeySetDiff]]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=idp), base_url=ISSUER)
    diffs: list[KeySetDiff] = []

    async def record(diff: KeySetDiff) -> None:
        diffs.append(diff)

    client = UpstreamClient(http, issuer=ISSUER)
    kw.setdefault("rng", random.Random(7))
    return UpstreamPoller(client, on_change=record, clock=clock, **kw), diffs  # type: ignore[arg-type]


async def run_until(poller: UpstreamPoller, clock: ManualClock, end: float) -> None:
    """Poll at every scheduled time up to ``end``, moving the clock there."""
    while True:
        at = max(poller.next_poll_at, clock())
        if at > end:
            clock.set(end)
            return
        clock.set(at)
        await poller.poll()


def jwks_times(idp: StandInIdP) -> list[float]:
    return [t for t, path, _ in idp.log if path == JWKS_PATH]


async def test_a_quiet_day_costs_one_fetch_per_max_age_and_the_rest_are_304s(
    clock: ManualClock,
) -> None:
    idp = StandInIdP(alg="ES256", issuer=ISSUER, max_age_s=600, clock=clock)
    poller, diffs = make(idp, clock)
    await run_until(poller, clock, clock() + DAY_S)
    times = jwks_times(idp)
    # Never sooner than max-age after the last; jitter (<= 10%) only lengthens.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 600 and max(gaps) <= 660
    assert 131 <= len(times) <= 145
    assert idp.not_modified == len(times) - 1 == poller.client.not_modified
    assert idp.requests["/.well-known/openid-configuration"] == 1
    assert len(diffs) == 1 and [k.kid for k in diffs[0].added] == [idp.signing.kid]


async def test_a_max_age_below_the_floor_is_polled_at_the_floor(clock: ManualClock) -> None:
    idp = StandInIdP(alg="ES256", issuer=ISSUER, max_age_s=0, clock=clock)
    poller, _ = make(idp, clock, policy=PollPolicy(floor_s=120, jitter_ratio=0))
    await run_until(poller, clock, clock() + 3600)
    assert len(jwks_times(idp)) == 31  # at 0, 120, ..., 3600


async def test_retry_after_and_backoff_are_obeyed(clock: ManualClock) -> None:
    idp = StandInIdP(alg="ES256", issuer=ISSUER, max_age_s=300, clock=clock)
    policy = PollPolicy(floor_s=60, jitter_ratio=0, backoff_base_s=60)
    poller, _ = make(idp, clock, policy=policy)
    start = clock()
    await poller.poll()
    idp.fail_next(429, retry_after="1800")
    await run_until(poller, clock, start + 300)  # the 429 at 300
    assert poller.failures == 1 and poller.quiet_until == start + 300 + 1800
    # An early fetch (a miss hint) inside the Retry-After is dropped: no request goes out.
    clock.advance(900)
    assert await poller.fetch_soon() is None
    idp.fail_next(503, count=3)
    await run_until(poller, clock, start + 10_000)
    times = jwks_times(idp)
    statuses = [s for _, p, s in idp.log if p == JWKS_PATH]
    assert statuses[:6] == [200, 429, 503, 503, 503, 304]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 300 (max-age), 1800 (Retry-After), then 120, 240, 480 of backoff (failures 2 to 4 in
    # a row), then max-age again.
    assert gaps[:6] == [300, 1800, 120, 240, 480, 300]


async def test_auth0_rotation_is_reported_once_each_step_and_retire_waits_for_the_hold(
    clock: ManualClock,
) -> None:
    idp = StandInIdP(alg="RS256", issuer=ISSUER, max_age_s=60, clock=clock)
    poller, diffs = make(idp, clock, hold_s=900, policy=PollPolicy(jitter_ratio=0))
    old = idp.signing.kid
    await run_until(poller, clock, clock() + 120)
    new = idp.publish_next()
    await run_until(poller, clock, clock() + 120)
    assert [k.kid for k in diffs[-1].added] == [new]
    idp.switch()
    idp.remove_old()
    removed_at = clock()
    await run_until(poller, clock, removed_at + 600)
    assert old in poller.tracker.current  # still inside the hold
    await run_until(poller, clock, removed_at + 1000)
    assert diffs[-1].retired == (old,) and set(poller.tracker.current) == {new}
    assert len(diffs) == 3


async def test_early_fetches_share_one_request_and_one_cooldown(clock: ManualClock) -> None:
    idp = StandInIdP(alg="ES256", issuer=ISSUER, max_age_s=3600, clock=clock)
    poller, diffs = make(idp, clock, cooldown_s=30)
    await poller.poll()
    before = idp.requests[JWKS_PATH]
    clock.advance(31)
    kid = idp.rotate_at_once()  # signs at once: verifiers will see unknown kids
    results = await asyncio.gather(*(poller.fetch_soon() for _ in range(50)))
    assert idp.requests[JWKS_PATH] == before + 1  # 50 asks, one fetch
    # Whoever fetched or joined gets the diff; the rest were dropped inside the cooldown.
    fetched = [r for r in results if r is not None]
    assert fetched and all([k.kid for k in r.added] == [kid] for r in fetched)
    assert kid in poller.tracker.current
    for _ in range(100):  # inside the cooldown: dropped, no request
        assert await poller.fetch_soon() is None
    clock.advance(30)
    assert await poller.fetch_soon() is not None
    assert idp.requests[JWKS_PATH] == before + 2


async def test_a_bad_document_keeps_the_last_good_set(clock: ManualClock) -> None:
    idp = StandInIdP(alg="ES256", issuer=ISSUER, max_age_s=60, clock=clock)
    poller, diffs = make(idp, clock, hold_s=0)
    await poller.poll()
    held = set(poller.tracker.current)
    idp.fail_next(200)  # a 200 whose body is not a JWKS
    clock.advance(60)
    assert not await poller.poll()
    assert poller.failures == 1 and set(poller.tracker.current) == held


async def test_entra_shaped_keys_take_the_advertised_algorithm(clock: ManualClock) -> None:
    idp = StandInIdP(alg="RS256", issuer=ISSUER, publish_alg=False, clock=clock)
    poller, diffs = make(idp, clock)
    await poller.poll()
    assert [k.alg for k in diffs[0].added] == ["RS256"]
    idp2 = StandInIdP(
        alg="RS256",
        issuer=ISSUER,
        publish_alg=False,
        advertised_algs=["RS256", "PS256"],
        clock=clock,
    )
    poller2, diffs2 = make(idp2, clock)
    await poller2.poll()
    assert not diffs2 and poller2.last is not None and poller2.last.keys is not None
    assert [s.reason for s in poller2.last.keys.skipped] == ["missing_alg"]
