"""Prometheus metrics of the relay, on a registry the caller chooses (tests use their own).

Partner ids are labels: partners are registered by an operator, so their number stays small.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge

#: ``outcome`` label values of ``keyherald_relay_deliveries_total``.
OUTCOMES = ("delivered", "retry", "dead_lettered", "collapsed", "gone", "disabled")


class RelayMetrics:
    """Every metric the relay exports.

    :param registry: where to register; a private :class:`CollectorRegistry` by default, so two
        relays in one process (tests) do not collide on the global one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.deliveries = Counter(
            "keyherald_relay_deliveries",
            "Deliveries by final outcome of an attempt.",
            ["partner", "outcome"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "keyherald_relay_attempts",
            "HTTP delivery attempts by result (status class or error reason).",
            ["partner", "result"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "keyherald_relay_retry_queue_depth",
            "Items waiting in a partner's queue.",
            ["partner"],
            registry=self.registry,
        )
        self.oldest_age = Gauge(
            "keyherald_relay_oldest_undelivered_age_seconds",
            "Age of the oldest undelivered event of a partner (0 when none).",
            ["partner"],
            registry=self.registry,
        )
        self.held = Counter(
            "keyherald_relay_held",
            "Delivery steps that waited because an older stream entry was not queued yet (a "
            "replica died holding it, until it is reclaimed).",
            ["partner"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "keyherald_relay_dead_letters",
            "Entries moved to the dead-letter stream, by kind (delivery or stream) and reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.events = Counter(
            "keyherald_relay_events",
            "Stream entries consumed, by result (fanned_out, refused, skipped).",
            ["result"],
            registry=self.registry,
        )

    def forget_partner(self, partner_id: str) -> None:
        """Drop a deleted partner's series so it stops being reported."""
        for metric in (self.queue_depth, self.oldest_age, self.held):
            try:
                metric.remove(partner_id)
            except KeyError:
                pass
