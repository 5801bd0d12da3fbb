"""keyherald watcher: follows hosted identity providers' key sets (Auth0, Okta, Entra, Google,
Keycloak, Cognito) and reports each change, polling each upstream only as often as it asks.

Each upstream's keys are announced on keyherald's own protocol (signed, chained events, signed
snapshots, freshness records) by an :class:`UpstreamLedger`; :class:`UpstreamWatch` runs its
poller under a fenced lease shared by every watcher replica. ``keyherald watch`` serves it::

    KEYHERALD_WATCH_UPSTREAMS=https://tenant.eu.auth0.com/ KEYHERALD_WATCH_KEK=... \
        keyherald watch --port 8100
"""

from .diff import KeySetDiff, KeySetTracker
from .errors import UpstreamError, WatcherError
from .ledger import UpstreamLedger, canonical_jwk, upstream_change
from .poller import UpstreamPoller
from .schedule import PollPolicy, Response, next_delay_s, parse_retry_after
from .service import UpstreamWatch
from .upstream import Discovery, Fetch, UpstreamClient

__all__ = [
    "Discovery",
    "Fetch",
    "KeySetDiff",
    "KeySetTracker",
    "PollPolicy",
    "Response",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamLedger",
    "UpstreamPoller",
    "UpstreamWatch",
    "WatcherError",
    "canonical_jwk",
    "next_delay_s",
    "parse_retry_after",
    "upstream_change",
]
