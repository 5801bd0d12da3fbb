"""Cache-Control parsing and the poll schedule (pure), conditional fetches (real issuer)."""

import random

import pytest

from subscriber.errors import FetchError
from subscriber.jwks_client import JwksClient, parse_max_age, poll_delay_s
from tests.subscriber.conftest import ISSUER, Issuer


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=900", 900.0),
        ("max-age=60", 60.0),
        ('public, max-age="30"', 30.0),
        ("no-cache", 0.0),
        ("public, s-maxage=10", None),
        (None, None),
    ],
)
def test_parse_max_age(header: str | None, seconds: float | None) -> None:
    assert parse_max_age(header) == seconds


def test_poll_delay_follows_max_age_clamped_with_jitter_that_only_shortens() -> None:
    rng = random.Random(3)
    delays = [poll_delay_s(900.0, rng, min_s=5.0, max_s=300.0) for _ in range(1000)]
    assert 240.0 <= min(delays) and max(delays) <= 300.0 and len(set(delays)) > 900
    assert poll_delay_s(0.0, rng, min_s=5.0, max_s=300.0) <= 5.0
    assert 40.0 <= poll_delay_s(50.0, rng, min_s=5.0, max_s=300.0) <= 50.0


async def test_conditional_fetch_gets_304_until_the_key_set_changes(issuer: Issuer) -> None:
    client = JwksClient(issuer.http, ISSUER)
    first = await client.fetch_jwks()
    again = await client.fetch_jwks()
    assert (first.not_modified, again.not_modified) == (False, True)
    assert again.doc == first.doc and first.max_age_s == issuer.settings.jwks_max_age_s
    await issuer.authority.rotate()
    changed = await client.fetch_jwks()
    assert not changed.not_modified
    assert changed.doc["keyherald"]["version"] > first.doc["keyherald"]["version"]


async def test_metadata_for_another_issuer_is_refused(issuer: Issuer) -> None:
    with pytest.raises(FetchError, match="is for issuer"):
        await JwksClient(issuer.http, ISSUER + "/").fetch_metadata()  # not exactly iss
