"""The soak report: what the run did and the figures the issue asks for, as one JSON document.

Classification of refused tokens (all were unexpired when sent, see ``loadgen.py``):

- ``revoked``: the soak revoked the token's key before sending it: a correct refusal;
- ``data_loss``: kept for the report's shape and always empty now: a FLUSHALL no longer loses
  keys, because the running issuer restores the key set it holds (its high-water mark);
- ``valid_rejected``: everything else. Must be 0.
"""

import math
from typing import Any

from .faults import Faults
from .harness import Cluster, EventRecord
from .loadgen import LoadGenerator, Rejection


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _flush_times(faults: Faults) -> list[float]:
    return [
        r.notes["flushed_at"]
        for r in faults.records
        if r.name == "redis_flush" and "flushed_at" in r.notes
    ]


def classify(rejection: Rejection, kid_epoch: dict[str, str], faults: Faults) -> tuple[str, str]:
    """``(class, why)`` of one refusal."""
    for rev in faults.revocations:
        # A verdict that came back after the revocation was requested may follow its commit.
        if rev.kid == rejection.kid and rejection.answered_at >= rev.requested_at:
            return "revoked", f"key revoked by the soak at {rev.requested_at:.3f}"
    # A FLUSHALL excuses nothing: the issuer restores the key set it holds.
    return "valid_rejected", "nothing explains it"


def key_history(kid: str, cluster: Cluster) -> dict[str, Any]:
    """When the stream says ``kid`` was added, activated, deactivated and retired."""
    out: dict[str, Any] = {}
    for e in cluster.events:
        if e.kid == kid and e.type in ("key-added", "key-activated"):
            out[e.type.removeprefix("key-")] = round(e.ts, 3)
        elif e.type == "key-activated" and e.data.get("previous_kid") == kid:
            out["deactivated"] = round(e.ts, 3)
        elif e.kid == kid and e.type == "key-retired":
            out["retired"] = round(e.ts, 3)
            out["retired_reason"] = e.data.get("reason")
    if "deactivated" in out and "retired" in out:
        out["actual_grace_s"] = round(out["retired"] - out["deactivated"], 3)
    return out


def propagation(cluster: Cluster, faults: Faults) -> dict[str, Any]:
    """Time from ``key-added`` to each verifier first holding the key, from the verifiers'
    own first-held times; only instances that were running when the key was added count."""
    windows = [(r.started_at, r.settled_at, r.name) for r in faults.records]
    delays: list[tuple[float, str, str, str | None]] = []
    for event in cluster.events:
        if event.type != "key-added":
            continue
        for iid, held in cluster.first_held.items():
            born = min(held.values(), default=math.inf)
            if born >= event.ts or event.kid not in held:
                continue
            during = next((n for s, e, n in windows if s <= event.ts <= e), None)
            delays.append((held[event.kid] - event.ts, event.kid, iid, during))
    quiet = [d for d in delays if d[3] is None]
    worst = max(delays, default=None)
    worst_quiet = max(quiet, default=None)
    return {
        "samples": len(delays),
        "max_s": round(worst[0], 4) if worst else None,
        "max_during_fault": worst[3] if worst else None,
        "max_outside_faults_s": round(worst_quiet[0], 4) if worst_quiet else None,
        "p50_s": round(_percentile([d[0] for d in delays], 0.50), 4),
        "p99_s": round(_percentile([d[0] for d in delays], 0.99), 4),
    }


def activations_before_held(cluster: Cluster, faults: Faults) -> list[dict[str, Any]]:
    """Activations at a moment when some running verifier did not hold the key yet (what the
    ``confirmed`` activation gate is for), with the fault under way at the time."""
    windows = [(r.started_at, r.settled_at, r.name) for r in faults.records]
    out = []
    for event in cluster.events:
        if event.type != "key-activated" or not event.data.get("previous_kid"):
            continue
        for iid, held in cluster.first_held.items():
            born = min(held.values(), default=math.inf)
            if born < event.ts and event.kid in held and held[event.kid] > event.ts:
                out.append(
                    {
                        "kid": event.kid,
                        "instance": iid,
                        "worker": cluster.instance_worker.get(iid),
                        "late_s": round(held[event.kid] - event.ts, 4),
                        "during": next((n for s, e, n in windows if s <= event.ts <= e), None),
                    }
                )
    return out


def deliveries(cluster: Cluster, faults: Faults) -> dict[str, Any]:
    """Every announced event against what the partner received.

    An event of a key store that a FLUSHALL destroyed, still queued at the relay when the flush
    took the queue with it, is listed apart (``lost_in_flush``) with its distance to the flush.
    """
    received = [r for r in cluster.inbox() if r["phase"] == "received"]
    got = {(r["epoch"], r["version"]) for r in received}
    newest: dict[str, int] = {}
    for r in received:
        if r.get("set_epoch") is not None:
            newest[r["set_epoch"]] = max(newest.get(r["set_epoch"], 0), r["set_version"] or 0)
    flushes = _flush_times(faults)
    covered, lost, lost_in_flush = 0, [], []
    for event in cluster.events:
        if (event.epoch, event.version) in got:
            continue
        if newest.get(event.epoch, 0) >= event.version:
            covered += 1  # a delivered full key set at least this new carried it
        elif any(event.ts <= at for at in flushes):
            # Queued at the relay (in Redis) when a FLUSHALL took the queue with it.
            before = round(min(at for at in flushes if event.ts <= at) - event.ts, 3)
            lost_in_flush.append({**_event_id(event), "published_before_flush_s": before})
        else:
            lost.append(_event_id(event))
    ids = [r["webhook_id"] for r in received]
    return {
        "events": len(cluster.events),
        "delivered": len(got & {(e.epoch, e.version) for e in cluster.events}),
        "covered_by_full_set_only": covered,
        "lost": len(lost),
        "lost_events": lost,
        "lost_in_flush": lost_in_flush,
        "deliveries_received": len(received),
        "duplicates": len(ids) - len(set(ids)),
        "registrations": len(cluster.registrations),
    }


def _revocation(revocation: Any, cluster: Cluster) -> dict[str, Any]:
    committed = next(
        (
            e.ts
            for e in cluster.events
            if e.type == "key-retired"
            and e.kid == revocation.kid
            and e.data.get("reason") == "revoked"
        ),
        None,
    )
    out: dict[str, Any] = revocation.as_dict()
    if committed is not None:
        out["reach_all_from_commit_s"] = round(max(revocation.reached.values()) - committed, 4)
    return out


def stream_integrity(cluster: Cluster) -> dict[str, Any]:
    """Each epoch's versions are 1, 2, 3 ... with none missing or doubled, and every activation
    names the key that was active before it: each transition applied exactly once, and exactly
    one active key at a time."""
    by_epoch: dict[str, list[int]] = {}
    for e in cluster.events:
        by_epoch.setdefault(e.epoch, []).append(e.version)
    duplicates = sum(len(v) - len(set(v)) for v in by_epoch.values())
    gaps = sum(max(v) - len(set(v)) for v in by_epoch.values())
    broken_chain = []
    active: dict[str, str | None] = {}
    for e in cluster.events:
        if e.type == "key-retired" and e.data.get("reason") == "revoked":
            # Revoking the active key activates the next one with no previous (retiring) key.
            if active.get(e.epoch) == e.kid:
                active[e.epoch] = None
            continue
        if e.type != "key-activated":
            continue
        previous = e.data.get("previous_kid")
        if e.epoch in active and previous != active[e.epoch]:
            broken_chain.append({**_event_id(e), "previous_kid": previous})
        active[e.epoch] = e.kid
    return {
        "duplicate_versions": duplicates,
        "reappended_events": cluster.reappended_events,
        "missing_versions": gaps,
        "broken_chain": broken_chain,
    }


def _event_id(event: EventRecord) -> dict[str, Any]:
    return {"epoch": event.epoch, "version": event.version, "type": event.type, "kid": event.kid}


def build(
    cluster: Cluster, load: LoadGenerator, faults: Faults, started_at: float, ended_at: float
) -> dict[str, Any]:
    """The whole report."""
    t = cluster.timing
    kid_epoch = {e.kid: e.epoch for e in cluster.events if e.type == "key-added"}
    classes: dict[str, list[dict[str, Any]]] = {
        "revoked": [],
        "data_loss": [],
        "valid_rejected": [],
    }
    for rejection in load.stats.rejections:
        cls, why = classify(rejection, kid_epoch, faults)
        entry = {**rejection.as_dict(), "why": why}
        if cls == "valid_rejected":
            history = entry["key_history"] = key_history(rejection.kid, cluster)
            grace = history.get("actual_grace_s")
            short = grace is not None and grace < t.retire_grace_s
            if short and rejection.exp > history["retired"]:
                entry["why"] = (
                    f"the issuer retired the key {grace:g} s after it stopped signing, but the "
                    f"policy's grace is {t.retire_grace_s:g} s; the token outlived its key"
                )
        classes[cls].append(entry)
    return {
        "duration_s": round(ended_at - started_at, 1),
        "startup_s": round(cluster.ready_at - cluster.started_at, 1),
        "policy": {
            "rotation_period_s": t.rotation_period_s,
            "lead_s": t.lead_s,
            "retire_grace_s": t.retire_grace_s,
            "max_token_ttl_s": t.max_token_ttl_s,
            "jwks_max_age_s": t.jwks_max_age_s,
            "clock_skew_s": t.clock_skew_s,
        },
        "verifiers": {
            "processes": t.workers,
            "instances_per_process": t.instances_per_worker,
            "instances_seen": len(cluster.first_held),
            "socket_timeout_s": t.socket_timeout_s,
            "block_ms": t.block_ms,
        },
        "rotations": cluster.rotations(),
        "events": len(cluster.events),
        "epochs": len({e.epoch for e in cluster.events}),
        "events_refused_by_tail": cluster.refused_events,
        "tokens": {
            "minted": load.stats.minted,
            "mint_failed": load.stats.mint_failed,
            "verified": load.stats.verified,
            "rejected": load.stats.rejected,
            "no_answer": load.stats.unreachable,
            "keys_used": len(load.stats.kids),
        },
        "valid_rejected": len(classes["valid_rejected"]),
        "valid_rejections": classes["valid_rejected"],
        "revoked_rejected": len(classes["revoked"]),
        "data_loss_rejected": len(classes["data_loss"]),
        "data_loss_rejections": classes["data_loss"],
        "propagation": propagation(cluster, faults),
        "activations_before_every_verifier_held_the_key": activations_before_held(cluster, faults),
        "revocations": [_revocation(r, cluster) for r in faults.revocations],
        "revocation_reach_max_s": round(
            max((r.reach_s for r in faults.revocations), default=math.nan), 4
        ),
        "deliveries": deliveries(cluster, faults),
        "stream": stream_integrity(cluster),
        "faults": [r.as_dict() for r in faults.records],
        "event_log": [
            [e.epoch[:8], e.version, e.type, e.kid[:12], round(e.ts, 3)] for e in cluster.events
        ],
    }


def summary(report: dict[str, Any]) -> str:
    """The report's headline figures, one per line."""
    p, d = report["propagation"], report["deliveries"]
    lines = [
        f"duration {report['duration_s']} s, rotations {report['rotations']}, "
        f"events {report['events']} in {report['epochs']} epoch(s)",
        f"tokens minted {report['tokens']['minted']}, verified {report['tokens']['verified']}, "
        f"rejected {report['tokens']['rejected']} (revoked {report['revoked_rejected']}, "
        f"data loss {report['data_loss_rejected']}, VALID {report['valid_rejected']})",
        f"key-added -> last verifier holding it: max {p['max_s']} s (during "
        f"{p['max_during_fault']}), max outside faults {p['max_outside_faults_s']} s, "
        f"p99 {p['p99_s']} s over {p['samples']} samples",
        f"revocation reached every verifier in max {report['revocation_reach_max_s']} s "
        f"({len(report['revocations'])} revocations)",
        f"webhook events {d['events']}: delivered {d['delivered']}, covered by a later full "
        f"set {d['covered_by_full_set_only']}, LOST {d['lost']} (gone with the flushed queue "
        f"{len(d['lost_in_flush'])}), duplicates {d['duplicates']}",
        "faults: "
        + ", ".join(f"{f['name']} (settled {f['settle_s']} s)" for f in report["faults"]),
    ]
    return "\n".join(lines)
