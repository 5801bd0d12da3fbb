"""keyherald's webhook relay: key-rotation events delivered to partners over HTTPS, signed per
Standard Webhooks, in version order per partner, retried, and never sent to an internal
address. See ``docs/protocol.md`` ("Webhook relay") for the payload and headers."""

from .api import create_app
from .consumer import StreamConsumer, read_history
from .delivery import Deliverer
from .egress import EgressPolicy, forbidden_reason, redact_url
from .errors import ConfigError, DeliveryFailed, EgressRefused, PartnerNotFound, RelayError
from .items import Item
from .keysource import KeySnapshot, KeySource, SnapshotKeySource
from .metrics import RelayMetrics
from .partners import Partner, PartnerStore
from .policy import DeliveryPolicy
from .queue import DeliveryStore
from .schedule import RetrySchedule
from .service import Relay
from .settings import RelaySettings
from .signing import new_secret, webhook_headers

__all__ = [
    "ConfigError",
    "Deliverer",
    "DeliveryFailed",
    "DeliveryPolicy",
    "DeliveryStore",
    "EgressPolicy",
    "EgressRefused",
    "Item",
    "KeySnapshot",
    "KeySource",
    "Partner",
    "PartnerNotFound",
    "PartnerStore",
    "Relay",
    "RelayError",
    "RelayMetrics",
    "RelaySettings",
    "RetrySchedule",
    "SnapshotKeySource",
    "StreamConsumer",
    "create_app",
    "forbidden_reason",
    "new_secret",
    "read_history",
    "redact_url",
    "webhook_headers",
]
