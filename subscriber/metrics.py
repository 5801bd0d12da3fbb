"""Prometheus metrics of the subscriber library (prometheus-client).

Metrics live in the registry the caller passes (``prometheus_client.REGISTRY`` by default).
Verifiers sharing a registry share one :class:`Metrics`, so creating many verifiers in one
process (tests, benchmarks) never registers a name twice; counters then add up across them and
gauges carry an ``issuer`` label.

====================================== ======================================================
``keyherald_verifications_total``      tokens verified, by ``outcome`` (valid/invalid) and
                                       ``reason`` (``ok`` or the refusal reason)
``keyherald_events_applied_total``     stream events applied, by ``type``
``keyherald_events_ignored_total``     verified events not applied (replayed, reordered,
                                       old epoch), by ``outcome``
``keyherald_events_rejected_total``    stream entries refused (forged, malformed), by
                                       ``reason``
``keyherald_resyncs_total``            key set rebuilt from the JWKS, by ``cause``
``keyherald_jwks_fetches_total``       JWKS requests, by ``trigger`` and ``result``
                                       (``ok``, ``not_modified``, ``error``)
``keyherald_stream_lag_seconds``       issuer commit to this verifier applying the last event
``keyherald_keyset_version``           key-set version held
``keyherald_state``                    1 for the current state (live/degraded/failed/stale),
                                       else 0
``keyherald_task_restarts_total``      background loops restarted after dying, by ``task``
``keyherald_heartbeat_failures_total`` heartbeats that could not be written
====================================== ======================================================
"""

import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

STATES: Final = ("live", "degraded", "failed", "stale")

_lock = threading.Lock()
_off: "Metrics | None" = None
_by_registry: "weakref.WeakKeyDictionary[CollectorRegistry, Metrics]" = weakref.WeakKeyDictionary()


class Tally:
    """Counts by key with no lock: each key's count is an :class:`itertools.count`.

    A token verification is the hot path, and a locked ``Counter.inc()`` cost ES256 about 3%
    of its throughput in ``bench/verify.py`` (the lock round trip, and the cache lines it
    touches next to the signature check). ``next()`` on a count is one C call that the GIL
    makes atomic, so threads sharing a verifier lose no increment. A count does not expose
    its value, but its ``repr`` does: ``count(7)`` after seven increments.
    """

    def __init__(self) -> None:
        self._counts: dict[str, itertools.count[int]] = {}

    def counter(self, key: str) -> "itertools.count[int]":
        """The count of ``key``: ``next()`` on it adds one."""
        found = self._counts.get(key)
        if found is None:
            found = self._counts.setdefault(key, itertools.count())  # atomic: one count wins
        return found

    def add(self, key: str) -> None:
        """Count one ``key``."""
        next(self.counter(key))

    def totals(self) -> dict[str, int]:
        """Every key's count so far."""
        return {key: int(repr(count)[6:-1]) for key, count in list(self._counts.items())}


class _VerificationsCollector(Collector):
    """``keyherald_verifications_total`` from a :class:`Tally` keyed by reason."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "keyherald_verifications",
            "Tokens verified, by outcome and reason.",
            labels=["outcome", "reason"],
        )

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()  # the name only: lets the registry refuse a duplicate

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for reason, count in sorted(self._tally.totals().items()):
            family.add_metric(["valid" if reason == "ok" else "invalid", reason], count)
        yield family


class Metrics:
    """The subscriber's metrics in one registry; get it with :func:`metrics_for`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        #: Verifications by reason: ``"ok"`` for a valid token, else the refusal reason.
        self.verifications = Tally()
        registry.register(_VerificationsCollector(self.verifications))
        self.events_applied = Counter(
            "keyherald_events_applied",
            "Key-lifecycle events applied to the key set.",
            ["type"],
            registry=registry,
        )
        self.events_ignored = Counter(
            "keyherald_events_ignored",
            "Verified events not applied (replayed, reordered, old epoch).",
            ["outcome"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "keyherald_events_rejected",
            "Stream entries refused (forged, malformed, wrong issuer).",
            ["reason"],
            registry=registry,
        )
        self.resyncs = Counter(
            "keyherald_resyncs", "Key set rebuilt from the JWKS.", ["cause"], registry=registry
        )
        self.jwks_fetches = Counter(
            "keyherald_jwks_fetches",
            "JWKS requests, by trigger and result.",
            ["trigger", "result"],
            registry=registry,
        )
        self.stream_lag = Gauge(
            "keyherald_stream_lag_seconds",
            "Time from the issuer committing the last event to this verifier applying it.",
            ["issuer"],
            registry=registry,
        )
        self.keyset_version = Gauge(
            "keyherald_keyset_version", "Key-set version held.", ["issuer"], registry=registry
        )
        self.state = Gauge(
            "keyherald_state",
            "1 for the verifier's current state, 0 for the others.",
            ["issuer", "state"],
            registry=registry,
        )
        self.task_restarts = Counter(
            "keyherald_task_restarts",
            "Background loops (follower, poller, heartbeat) restarted after dying.",
            ["task"],
            registry=registry,
        )
        self.heartbeat_failures = Counter(
            "keyherald_heartbeat_failures",
            "Heartbeats that could not be written (Redis unreachable or read-only).",
            registry=registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Gauge, *values: str) -> Any:
        """``metric.labels(*values)``, memoised: ``labels()`` costs microseconds, and events
        touch several metrics in every verifier of a process."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (``0.0`` if never set), e.g.
        ``value("keyherald_resyncs_total", cause="gap")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def set_state(self, issuer: str, state: str) -> None:
        for name in STATES:
            self.child(self.state, issuer, name).set(1 if name == state else 0)


def metrics_for(registry: CollectorRegistry | None = REGISTRY) -> Metrics:
    """The :class:`Metrics` of ``registry``, created on first use; ``None`` turns metrics off
    (they go to one private registry nobody scrapes, shared by every such verifier)."""
    global _off
    with _lock:
        if registry is None:
            if _off is None:
                _off = Metrics(CollectorRegistry(auto_describe=False))
            return _off
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = Metrics(registry)
        return metrics
