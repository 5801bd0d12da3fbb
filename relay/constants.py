"""Every tunable default of the relay, in one place, with its unit in the name."""

from typing import Final

#: Standard Webhooks' schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
retry_schedule_s: Final = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: Up to this fraction of each retry wait is added at random.
retry_jitter: Final = 0.1
#: A partner's ``Retry-After`` is honoured up to this.
max_retry_after_s: Final = 36_000.0
#: Total time of one delivery attempt (resolve, connect, send, read the answer).
delivery_timeout_s: Final = 15.0
#: A replica's hold on one partner's queue; must exceed the delivery timeout.
partner_lease_s: Final = 30.0
#: Stream entries idle this long in a peer's pending list are taken over; must exceed the
#: delivery timeout so a live replica's work is never taken from it.
idle_before_claim_s: Final = 60.0
#: Hand-outs of one stream entry before it is dead-lettered.
max_entry_attempts: Final = 5
#: A partner failing without one success for this long is disabled (Svix uses 5 days).
failure_disable_s: Final = 5 * 86_400.0
#: A replaced secret keeps signing for this long after a rotation.
secret_overlap_s: Final = 86_400.0
#: Bytes of a partner's answer read at most.
response_max_bytes: Final = 64 * 1024
#: How often a replica looks for work queued by its peers.
poll_interval_s: Final = 1.0
#: XREADGROUP BLOCK; well below redis-py's socket timeout.
block_ms: Final = 2_000
#: Stream entries read per XREADGROUP / XAUTOCLAIM / XPENDING call.
batch_size: Final = 100
#: Attempt records kept per partner, dead letters kept in all (approximate, MAXLEN ~).
attempts_kept: Final = 1_000
dead_letters_kept: Final = 10_000
#: How long ``keyherald relay`` waits at start for the issuer metadata (announcement keys).
metadata_wait_s: Final = 60.0
#: An event signed by an unknown announcement key makes the relay refetch the issuer metadata
#: (an issuer that lost its store may have a new one) at most once per this interval, so
#: whoever can write to the stream cannot turn forged entries into a flood of fetches.
announce_refresh_cooldown_s: Final = 10.0
#: Longest partner URL and description accepted at registration.
partner_url_max_chars: Final = 2048
description_max_chars: Final = 1024
