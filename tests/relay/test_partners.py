"""Partner records in the real Redis."""

import pytest

from relay.egress import EgressPolicy
from relay.errors import ConfigError, EgressRefused, PartnerNotFound
from relay.partners import PartnerStore
from tests.relay.conftest import ISSUER


@pytest.fixture
def store(redis, clock) -> PartnerStore:
    return PartnerStore(redis, ISSUER, overlap_s=3600, policy=EgressPolicy(), clock=clock)


async def test_register_list_disable_enable_delete(store) -> None:
    p, secret = await store.register("https://hooks.example/in", ["key-added"], "billing")
    assert secret.startswith("whsec_")
    assert p.wants("key-added") and not p.wants("key-retired")
    assert [x.id for x in await store.list()] == [p.id]
    assert secret not in str(p.public()) and secret not in repr(p)
    assert (await store.set_enabled(p.id, False, "manual")).disabled_reason == "manual"
    again = await store.set_enabled(p.id, True)
    assert again.enabled and again.disabled_reason is None
    await store.delete(p.id)
    with pytest.raises(PartnerNotFound):
        await store.get(p.id)
    with pytest.raises(PartnerNotFound):
        await store.delete(p.id)


async def test_registration_checks_url_and_event_types(store) -> None:
    with pytest.raises(EgressRefused):
        await store.register("gopher://hooks.example/")
    with pytest.raises(ConfigError):
        await store.register("https://hooks.example/", ["key-exploded"])
    with pytest.raises(ConfigError):
        await store.register("https://hooks.example/", [])
    p, _ = await store.register("https://hooks.example/")
    assert set(p.event_types) == {"key-added", "key-activated", "key-retired"}


async def test_rotation_keeps_the_old_secret_for_the_overlap(store, clock) -> None:
    p, first = await store.register("https://hooks.example/in")
    p, second = await store.rotate_secret(p.id)
    assert p.valid_secrets(clock()) == [second, first]
    clock.advance(3599)
    assert p.valid_secrets(clock()) == [second, first]
    clock.advance(1)
    assert p.valid_secrets(clock()) == [second]
    p, third = await store.rotate_secret(p.id)
    # The expired secret is dropped from the record at the next rotation.
    assert len(p.secrets) == 2 and p.valid_secrets(clock()) == [third, second]


def test_overlap_must_not_be_negative(redis) -> None:
    with pytest.raises(ConfigError, match='"-1"'):
        PartnerStore(redis, ISSUER, overlap_s=-1)
