"""Prometheus metrics of the subscriber library (prometheus-client).

Metrics live in the registry the caller passes (``prometheus_client.REGISTRY`` by default).
Verifiers sharing a registry share one :class:`Metrics`, so creating many verifiers in one
process (tests, benchmarks) never registers a name twice; counters then add up across them and
gauges carry an ``issuer`` label.

===================================== ======================================================
``keyherald_verifications_total``     tokens verified, by ``outcome`` (valid/invalid) and
                                      ``reason`` (``ok`` or the refusal reason)
``keyherald_events_applied_total``    stream events applied, by ``type``
``keyherald_events_ignored_total``    verified events not applied (replayed, reordered,
                                      old epoch), by ``outcome``
``keyherald_events_rejected_total``   stream entries refused (forged, malformed), by
                                      ``reason``
``keyherald_resyncs_total``           key set rebuilt from the JWKS, by ``cause``
``keyherald_jwks_fetches_total``      JWKS requests, by ``trigger`` and ``result``
                                      (``ok``, ``not_modified``, ``error``)
``keyherald_stream_lag_seconds``      issuer commit to this verifier applying the last event
``keyherald_keyset_version``          key-set version held
``keyherald_state``                   1 for the current state (live/degraded/stale), else 0
===================================== ======================================================
"""

import threading
import weakref
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

STATES: Final = ("live", "degraded", "stale")

_lock = threading.Lock()
_off: "Metrics | None" = None
_by_registry: "weakref.WeakKeyDictionary[CollectorRegistry, Metrics]" = weakref.WeakKeyDictionary()


class Metrics:
    """The subscriber's metrics in one registry; get it with :func:`metrics_for`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.verifications = Counter(
            "keyherald_verifications",
            "Tokens verified, by outcome and reason.",
            ["outcome", "reason"],
            registry=registry,
        )
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
        # Bound once: the hot path then costs one locked increment.
        self.valid = self.verifications.labels(outcome="valid", reason="ok")
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Gauge, *values: str) -> Any:
        """``metric.labels(*values)``, memoised: ``labels()`` costs microseconds, and events
        touch several metrics in every verifier of a process."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def invalid(self, reason: str) -> None:
        """Count one refused token (``reason`` comes from a closed set of codes)."""
        self.child(self.verifications, "invalid", reason).inc()

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
