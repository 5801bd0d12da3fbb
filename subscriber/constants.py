"""Every tunable default of the subscriber library, in one place, with its unit in the name."""

from typing import Final

#: Wire-format schema version carried by every event; bump on an incompatible change.
#: 2: events carry the state digests before and after them (``prev``, ``digest``).
EVENT_SCHEMA: Final = 2
#: ``typ`` header of the compact JWS that wraps every announcement.
EVENT_JWS_TYP: Final = "keyherald-event"
#: ``typ`` header of the signed key-set snapshot and of the signed freshness record.
SNAPSHOT_JWS_TYP: Final = "keyherald-snapshot+jwt"
FRESHNESS_JWS_TYP: Final = "keyherald-freshness"
#: Path of the signed key-set snapshot, relative to the issuer URL.
SNAPSHOT_PATH: Final = "/.well-known/keyherald-snapshot.jwt"
#: A stream entry, event or freshness JWS larger than this is dropped unread.
max_announcement_bytes: Final = 64 * 1024
#: Metadata, JWKS and snapshot responses larger than this are refused.
max_document_bytes: Final = 1024 * 1024
#: Default interval of the issuer's signed freshness records, when the snapshot names none.
freshness_interval_s: Final = 30.0
#: A verifier whose newest signed freshness is older than this many intervals is degraded.
freshness_intervals_allowed: Final = 3
#: Path of the issuer metadata document, relative to the issuer URL.
METADATA_PATH: Final = "/.well-known/openid-configuration"
JWKS_PATH: Final = "/.well-known/jwks.json"
#: An upstream watcher serves each upstream's metadata and snapshot under
#: ``<watcher>/upstreams/<issuer tag>`` (see ``jwks_client.announcer_base``).
UPSTREAMS_PATH: Final = "/upstreams"

#: Tokens larger than this are rejected before any decoding (RFC 8725 section 3.11 spirit).
max_token_bytes: Final = 8 * 1024
#: ``kid`` values longer than this are rejected without a lookup.
max_kid_chars: Final = 128
#: Default leeway for ``exp``/``nbf``/``iat`` checks.
leeway_s: Final = 30.0

#: XREAD BLOCK; must stay well below the socket timeout or redis-py raises TimeoutError.
block_ms: Final = 2_000
socket_timeout_s: Final = 5.0
#: Unknown ``kid`` while degraded: at most one JWKS refresh per cooldown.
unknown_kid_cooldown_s: Final = 30.0
#: With the stream unreachable, keys older than this make the verifier ``stale``.
max_staleness_s: Final = 3_600.0
#: JWKS poll interval when the response carries no ``max-age``.
default_poll_interval_s: Final = 300.0
#: Heartbeat record TTL and refresh interval.
heartbeat_ttl_s: Final = 30.0
heartbeat_interval_s: Final = 10.0
#: HTTP timeout for metadata and JWKS fetches.
http_timeout_s: Final = 5.0

# --- subscriber runtime (follower, poller, presence) ---
#: XREAD COUNT: entries fetched per call; small, so a stream flooded with junk is read in
#: small batches between which the follower yields.
xread_count: Final = 16
#: Event-triggered resyncs (gap, new epoch, fork) beyond the first wait out this cooldown, so a
#: replay of old entries costs one snapshot fetch, not one per entry.
resync_cooldown_s: Final = 5.0
#: Reconnect backoff (exponential with full jitter) after Redis errors.
reconnect_min_s: Final = 0.05
reconnect_max_s: Final = 5.0
#: The JWKS poll interval follows ``Cache-Control: max-age``, clamped to these bounds. The
#: floor is low because the issuer's lead (a key's publication before it signs) is promised
#: against its max-age: a degraded verifier polling slower than the max-age can miss a key.
min_poll_interval_s: Final = 1.0
max_poll_interval_s: Final = 300.0
#: Poll delays are drawn uniformly from ``[1 - poll_jitter_ratio, 1] * interval`` so that a
#: fleet restarted together does not poll together.
poll_jitter_ratio: Final = 0.2
#: A background loop (follower, poller, heartbeat) that dies is restarted after a backoff
#: doubling from the minimum to the maximum.
task_restart_min_s: Final = 0.1
task_restart_max_s: Final = 30.0
#: Departed kids remembered (to refuse with ``revoked_key``/``retired_key``); oldest dropped.
max_gone_kids: Final = 1_024
#: Verified tokens a verifier remembers (a token seen again skips its signature check), and
#: the longest token it stores: at most about 1,024 x 8 KiB even when every token is huge.
token_cache_size: Final = 1_024
token_cache_max_token_chars: Final = 4_096
#: Kids seen revoked or retired that are never trusted again. Only signed events and
#: snapshots add to it, so it grows with the issuer's rotations (a key a day for 270 years).
max_ended_kids: Final = 100_000

# --- upstream mode (verifiers of a hosted identity provider, announced by a watcher) ---
#: A live verifier reports at most one unknown kid per this many seconds to the watcher (which
#: fetches at most once per its own cooldown for the whole fleet). Keep it well below the
#: watcher's cooldown, so a real new kid is reported in the cooldown a flood already started.
miss_hint_interval_s: Final = 5.0
#: Miss hints kept on the stream (the watcher only needs the newest).
miss_hints_kept: Final = 64
#: How long ``Verifier.start`` retries an unreachable issuer (jittered backoff, up to 3 s).
start_timeout_s: Final = 10.0
