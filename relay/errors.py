"""Exceptions raised by the webhook relay.

Every failure a caller can act on carries a machine-readable ``reason`` so metrics and logs
can count it::

    RelayError
    ├── ConfigError          a setting cannot work (bad_schedule, bad_duration, bad_allow_list)
    ├── PartnerNotFound      no partner with that id (unknown_partner)
    ├── EgressRefused        a partner URL may not be contacted (bad_url, https_required,
    │                        forbidden_address, resolve_failed)
    └── DeliveryFailed       one attempt did not succeed (status, timeout, connect,
                             redirect, stale_keys)

No message ever contains a webhook secret or a URL's credentials.
"""


class RelayError(Exception):
    """Root of every error the relay raises."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(RelayError, ValueError):
    """A setting that cannot work; the message names the value. Also a ``ValueError``, as a
    bad argument is."""

    reason = "bad_config"


class PartnerNotFound(RelayError):
    """No partner is registered under the given id."""

    reason = "unknown_partner"


class EgressRefused(RelayError):
    """The relay refuses to contact a URL (scheme, address or resolution)."""

    reason = "forbidden_address"


class DeliveryFailed(RelayError):
    """One delivery attempt failed; ``status`` is the HTTP status when there was one."""

    reason = "failed"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.retry_after_s = retry_after_s
