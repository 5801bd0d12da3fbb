"""Standard Webhooks signatures, checked with the reference library."""

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay.schedule import RetrySchedule
from relay.signing import is_secret, new_secret, webhook_headers


def test_secrets_are_whsec_and_unique() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(s.startswith("whsec_") and is_secret(s) for s in secrets)
    assert not is_secret("whsec_short") and not is_secret("plain")


def test_reference_library_verifies_our_headers() -> None:
    secret = new_secret()
    body = b'{"type":"keyherald.key-added","data":{}}'
    headers = webhook_headers("msg_1", time.time(), body, [secret])
    assert Webhook(secret).verify(body, headers) == {"type": "keyherald.key-added", "data": {}}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_signature_matches_the_spec_by_hand() -> None:
    import base64
    import hashlib
    import hmac

    secret = new_secret()
    headers = webhook_headers("msg_2", 1_700_000_000.9, b"{}", [secret])
    assert headers["webhook-timestamp"] == "1700000000"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"msg_2.1700000000.{}", hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    # The library agrees when given an aware UTC time.
    when = datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert Webhook(secret).sign("msg_2", when, "{}") == headers["webhook-signature"]


def test_every_valid_secret_signs_during_an_overlap() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    headers = webhook_headers("msg_3", time.time(), body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(ValueError):
        webhook_headers("msg_3", time.time(), body, [])


def test_retry_schedule_follows_the_steps_with_bounded_jitter() -> None:
    schedule = RetrySchedule([0, 5, 300], jitter=0.1, max_retry_after_s=60)
    assert schedule.max_attempts == 3
    assert schedule.delay_s(1) == 0
    assert 5 <= schedule.delay_s(2) <= 5.5
    assert 300 <= schedule.delay_s(3) <= 330
    assert schedule.delay_s(4) is None
    assert schedule.delay_s(2, retry_after_s=30) == 30
    assert schedule.delay_s(2, retry_after_s=10_000) == 60
    with pytest.raises(ValueError, match=r"\[\]"):
        RetrySchedule([])
