"""The verification counters: lock-free on the hot path, exact, exported under one name."""

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from subscriber.metrics import Metrics, Tally, metrics_for


def test_threads_counting_at_once_lose_no_increment() -> None:
    tally = Tally()
    ok = tally.counter("ok")
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            next(ok)
            tally.add("expired")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tally.totals() == {"ok": 160_000, "expired": 160_000}


def test_counts_are_scraped_as_one_counter_by_outcome_and_reason() -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    for _ in range(3):
        next(metrics.verifications.counter("ok"))
    metrics.verifications.add("unknown_kid")
    assert metrics.value("keyherald_verifications_total", outcome="valid", reason="ok") == 3
    assert (
        metrics.value("keyherald_verifications_total", outcome="invalid", reason="unknown_kid") == 1
    )
    text = generate_latest(registry).decode()
    assert "# TYPE keyherald_verifications_total counter" in text
    assert 'keyherald_verifications_total{outcome="valid",reason="ok"} 3.0' in text


def test_a_second_collector_of_the_same_name_is_refused() -> None:
    registry = CollectorRegistry()
    metrics_for(registry)
    with pytest.raises(ValueError, match="keyherald_verifications"):
        Metrics(registry)
