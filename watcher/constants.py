"""Every tunable default of the upstream watcher, in one place, with its unit in the name."""

from typing import Final

#: Never poll one upstream more often than this, whatever its ``max-age`` says (0 included).
poll_floor_s: Final = 60.0
#: Our own intervals (no ``max-age``, error backoff) never exceed this. A provider that asks
#: for longer (``max-age``, ``Retry-After``) is honoured: never faster than the provider asks.
poll_ceiling_s: Final = 3_600.0
#: Interval when the JWKS response carries no ``max-age``.
default_interval_s: Final = 300.0
#: Each delay is lengthened by up to this fraction (never shortened), so replicas restarted
#: together drift apart and no poll comes before the provider's freshness ends.
jitter_ratio: Final = 0.1
#: First delay after a failed poll (429, 5xx, transport error); doubles per failure.
backoff_base_s: Final = 30.0
#: A ``max-age`` or ``Retry-After`` beyond this is read as this (a broken header must not
#: stop a watcher for a year).
max_honoured_s: Final = 86_400.0
#: A kid absent from the upstream set is retired only after it stayed absent this long:
#: providers' edges flap, serving an older set for a few minutes.
retire_hold_s: Final = 900.0
#: Timeout of one upstream HTTP request.
http_timeout_s: Final = 10.0
#: Response bodies larger than this are refused (a JWKS is a few kilobytes).
max_document_bytes: Final = 512 * 1024
#: Events stay on the stream at least this long (and at least the retire hold).
min_stream_retention_s: Final = 86_400.0
