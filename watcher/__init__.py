"""keyherald watcher: follows hosted identity providers' key sets (Auth0, Okta, Entra, Google,
Keycloak, Cognito) and reports each change, polling each upstream only as often as it asks.

::

    async with httpx.AsyncClient() as http:
        client = UpstreamClient(http, issuer="https://tenant.eu.auth0.com/")
        poller = UpstreamPoller(client, on_change=announce)
        await poller.run()
"""

from .diff import KeySetDiff, KeySetTracker
from .errors import UpstreamError, WatcherError
from .poller import UpstreamPoller
from .schedule import PollPolicy, Response, next_delay_s, parse_retry_after
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
    "UpstreamPoller",
    "WatcherError",
    "next_delay_s",
    "parse_retry_after",
]
