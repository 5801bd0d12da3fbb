"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

The signature is ``v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``; during a
secret rotation the header carries one signature per valid secret, space-separated, so a
partner verifies with either the old or the new secret. The HMAC itself is the reference
``standardwebhooks`` library's; it is given timezone-aware UTC times only, because its
``sign()`` replaces a naive datetime's zone with UTC instead of converting it.
"""

import base64
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
#: Standard Webhooks asks for 24 to 64 random bytes.
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh ``whsec_``-prefixed secret (base64 of 32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def is_secret(value: str) -> bool:
    """Whether ``value`` looks like a secret this module generates (for input checks)."""
    if not value.startswith(SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)) >= 24
    except ValueError:
        return False


def webhook_headers(
    msg_id: str, timestamp: float, body: bytes, secrets_: Iterable[str]
) -> dict[str, str]:
    """The three Standard Webhooks headers for one message.

    :param msg_id: stable across retries of the same message.
    :param timestamp: seconds since the epoch of this attempt.
    :param secrets_: every currently valid secret; each adds one signature.
    :raises ValueError: no secret given.
    """
    when = datetime.fromtimestamp(int(timestamp), tz=UTC)
    data = body.decode()
    signatures = [Webhook(s).sign(msg_id, when, data) for s in secrets_]
    if not signatures:
        raise ValueError("a webhook needs at least one secret to be signed")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": " ".join(signatures),
    }
