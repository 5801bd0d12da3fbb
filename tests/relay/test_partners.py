"""Partner records in the real Redis, with their secrets in clear or sealed under a KEK."""

import json

import pytest

from issuer.kek import Kek
from relay.egress import EgressPolicy
from relay.errors import ConfigError, EgressRefused, PartnerNotFound
from relay.partners import PartnerStore
from subscriber.redis_keys import relay_key
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
    assert set(p.event_types) == {"key-added", "key-activated", "key-retired", "key-set-restored"}


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


KEK = Kek(bytes(range(32)))


@pytest.fixture
def sealed_store(redis, clock) -> PartnerStore:
    return PartnerStore(redis, ISSUER, overlap_s=3600, policy=EgressPolicy(), clock=clock, kek=KEK)


async def _stored(redis, partner_id: str) -> str:
    raw = await redis.hget(relay_key(ISSUER, "partners"), partner_id)
    return raw.decode()


async def test_with_a_kek_no_secret_is_stored_in_clear(sealed_store, redis, clock) -> None:
    p, first = await sealed_store.register("https://hooks.example/in")
    p, second = await sealed_store.rotate_secret(p.id)
    stored = await _stored(redis, p.id)
    assert first not in stored and second not in stored
    assert first[len("whsec_") :] not in stored and second[len("whsec_") :] not in stored
    again = await sealed_store.get(p.id)
    assert again.valid_secrets(clock()) == [second, first]


async def test_sealed_secrets_refuse_a_store_without_the_kek_or_with_another(
    sealed_store, redis
) -> None:
    p, _ = await sealed_store.register("https://hooks.example/in")
    without = PartnerStore(redis, ISSUER, overlap_s=3600)
    with pytest.raises(ConfigError) as missing:
        await without.get(p.id)
    assert missing.value.reason == "kek_required"
    other = PartnerStore(redis, ISSUER, overlap_s=3600, kek=Kek(bytes(32)))
    with pytest.raises(ConfigError) as wrong:
        await other.list()
    assert wrong.value.reason == "kek_mismatch"


async def test_a_sealed_secret_copied_to_another_partner_does_not_open(sealed_store, redis) -> None:
    a, _ = await sealed_store.register("https://a.example/in")
    b, _ = await sealed_store.register("https://b.example/in")
    record_a = json.loads(await _stored(redis, a.id))
    record_b = json.loads(await _stored(redis, b.id))
    record_b["secrets"][0]["sealed"] = record_a["secrets"][0]["sealed"]
    record_b["secrets"][0]["created_at"] = record_a["secrets"][0]["created_at"]
    await redis.hset(relay_key(ISSUER, "partners"), b.id, json.dumps(record_b))
    with pytest.raises(ConfigError) as copied:
        await sealed_store.get(b.id)
    assert copied.value.reason == "kek_mismatch"


async def test_records_stored_in_clear_are_sealed_once_a_kek_is_set(store, redis, clock) -> None:
    p, secret = await store.register("https://hooks.example/in")
    assert secret in await _stored(redis, p.id)
    sealing = PartnerStore(redis, ISSUER, overlap_s=3600, clock=clock, kek=KEK)
    assert (await sealing.get(p.id)).valid_secrets(clock()) == [secret]  # clear still reads
    assert await sealing.seal_stored() == 1
    assert secret not in await _stored(redis, p.id)
    assert (await sealing.get(p.id)).valid_secrets(clock()) == [secret]
    assert await sealing.seal_stored() == 0  # nothing left in clear
    assert await store.seal_stored() == 0  # no KEK: nothing to do
