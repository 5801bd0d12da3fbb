"""Prometheus metrics of the issuer's store integrity, served at ``GET /admin/metrics``.

- ``keyherald_issuer_store_tampered_total``: reads of the store that failed authentication;
- ``keyherald_issuer_store_restores_total{reason}``: writes of the high-water mark back to the
  store (``store_empty``, ``store_behind``, ``fork``, ``tampered``, ``old_epoch``).

Read from the :class:`~issuer.ledger.Ledger` counters at scrape time, on a registry made for
the scrape, so several apps in one process (tests, replicas) never collide.
"""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .ledger import Ledger


class _IntegrityCollector(Collector):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        tampered = CounterMetricFamily(
            "keyherald_issuer_store_tampered",
            "Reads of the key store that failed authentication",
        )
        tampered.add_metric([], self._ledger.tamper_count)
        yield tampered
        restores = CounterMetricFamily(
            "keyherald_issuer_store_restores",
            "Key store written back from the high-water mark",
            labels=["reason"],
        )
        for reason, count in sorted(self._ledger.restores.items()):
            restores.add_metric([reason], count)
        yield restores


def integrity_registry(ledger: Ledger) -> CollectorRegistry:
    """A registry holding the integrity counters of ``ledger`` (cheap: made per scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_IntegrityCollector(ledger))
    return registry
